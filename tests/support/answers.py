"""What a real listener answers to raw bytes written over loopback, and the
Engine.IO sessions it holds meanwhile (the public edge's tests)."""

from __future__ import annotations

import asyncio
import contextlib
import time

from tests.support.metrics import metric
from tests.support.procs import ServerProcess

SOCKETS = "iofleet_engineio_sockets"  # Engine.IO sessions the node holds


async def answer_to(
    port: int, chunks: list[bytes], pause: float = 0.2, body: bool = False
) -> bytes:
    """What the server answers `chunks` written `pause` seconds apart (so each is
    a read of its own), up to the end of its head or its close: b"" is a bare
    close. With `body`, the response's body too (its `Content-Length`; none
    after a 101).

    What the server sends is read while the chunks are still being written: a
    server that answers and closes before the last one (aiohttp, refusing a
    malformed head) resets the connection when it gets the rest, and a reset
    discards what was received and not read yet."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    received = bytearray()
    answered = asyncio.Event()

    async def read() -> None:
        with contextlib.suppress(ConnectionError):
            while chunk := await reader.read(65536):
                received.extend(chunk)
                if whole_answer(bytes(received), body) is not None:
                    break
        answered.set()

    reading = asyncio.create_task(read())
    try:
        with contextlib.suppress(ConnectionError):
            for index, chunk in enumerate(chunks):
                if index:
                    await asyncio.sleep(pause)
                if answered.is_set():
                    break  # answered and closed: the rest would be reset
                writer.write(chunk)
                await writer.drain()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(answered.wait(), 5)
        answer = whole_answer(bytes(received), body)
        return bytes(received) if answer is None else answer
    finally:
        reading.cancel()
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()


def whole_answer(received: bytes, body: bool) -> bytes | None:
    """The response head in `received` (with its body, when `body` and not a
    101) once it is all there, else None."""
    end = received.find(b"\r\n\r\n")
    if end == -1:
        return None
    head = received[: end + 4]
    if not body or head.startswith(b"HTTP/1.1 101 "):
        return head
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    whole = received[: end + 4 + length]
    return whole if len(whole) == end + 4 + length else None


async def settle_sessions(server: ServerProcess, expected: float, within: float = 3.0) -> float:
    """The node's Engine.IO session count once it is `expected` (or after `within` s)."""
    deadline = time.monotonic() + within
    while True:
        held = metric(server.admin_url, SOCKETS)
        if held == expected or time.monotonic() >= deadline:
            return held
        await asyncio.sleep(0.05)
