"""The delay proxy standing for the inter-region path (iofleet/delay_proxy.py), on
a real socket: every byte is delayed once each way, a burst keeps its order and is
not serialised behind the delay, and a chunk leaves when due, not later."""

from __future__ import annotations

import asyncio
import time

from iofleet.delay_proxy import DelayProxy

DELAY = 0.05


async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    while data := await reader.read(65536):
        writer.write(data)
        await writer.drain()
    writer.close()


async def test_a_burst_crosses_in_order_delayed_once_each_way() -> None:
    target = await asyncio.start_server(echo, "127.0.0.1", 0)
    proxy = DelayProxy(target.sockets[0].getsockname()[:2], DELAY)
    front = await asyncio.start_server(proxy.serve, "127.0.0.1", 0)
    reader, writer = await asyncio.open_connection(*front.sockets[0].getsockname()[:2])
    try:
        sent = b"".join(b"m%04d;" % i for i in range(500))
        start = time.monotonic()
        for i in range(500):  # 500 writes, most of them chunks of their own
            writer.write(b"m%04d;" % i)
            if i % 50 == 0:
                await asyncio.sleep(0.002)
        first = await reader.readexactly(6)
        first_at = time.monotonic() - start
        rest = await asyncio.wait_for(reader.readexactly(len(sent) - 6), 5)
        all_at = time.monotonic() - start
        assert first + rest == sent
        assert 2 * DELAY <= first_at < 2 * DELAY + 0.03, first_at
        # The burst is in flight together: the last byte is not 500 delays behind.
        assert all_at < 2 * DELAY + 0.1, all_at
        assert proxy.bytes_up == proxy.bytes_down == len(sent)
    finally:
        writer.close()
        proxy.set_cut(True)
        front.close()
        target.close()
