"""`python -m iofleet.delay_proxy`: a TCP proxy that delays every byte by a fixed time
each way, with a cut switch: the inter-region path of the local multi-region fleet.

Each direction of each connection is a queue of (due time, chunk) written in
order once due, so the delay is added once per hop and a burst is not serialised
behind it (a 70 ms link carries many messages in flight, as a real one does);
what is due together leaves in one write. Its own cost (the event loop's timer
granularity, about 1 ms, and its scheduling on a busy machine) is measured beside
the relay's by `bench.cross_region` and reported apart. asyncio sets TCP_NODELAY
on every TCP transport, so Nagle adds nothing here.
`POST /cut` closes every connection and refuses new ones (the path is gone; TCP
peers see a reset, as after a route withdrawal), `POST /restore` lets them in
again. `GET /stats` answers the bytes carried each way; `GET /seen?text=` whether
a string crossed (what tests check for interest-only forwarding), from a capture
bounded to `CAPTURE_BYTES`. Control listener and proxy bind loopback only.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import signal
import sys
import time
from collections import deque

from aiohttp import web

CAPTURE_BYTES = 32 * 1024 * 1024
CHUNK = 65536


def address(value: str) -> tuple[str, int]:
    host, _, port = value.rpartition(":")
    return host or "127.0.0.1", int(port)


class DelayProxy:
    def __init__(self, target: tuple[str, int], delay: float) -> None:
        self.target = target
        self.delay = delay
        self.cut = False
        self.bytes_up = 0  # client -> target
        self.bytes_down = 0  # target -> client
        self.connections = 0
        self.capture = bytearray()
        self._links: set[asyncio.Task[None]] = set()

    async def serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.cut:
            writer.close()
            return
        try:
            far_reader, far_writer = await asyncio.open_connection(*self.target)
        except OSError:
            writer.close()
            return
        task = asyncio.current_task()
        assert task is not None
        self._links.add(task)
        self.connections += 1
        try:
            await asyncio.gather(
                self._pipe(reader, far_writer, up=True), self._pipe(far_reader, writer, up=False)
            )
        except (OSError, asyncio.CancelledError):
            pass
        finally:
            self._links.discard(task)
            for end in (writer, far_writer):
                end.close()

    async def _pipe(self, src: asyncio.StreamReader, dst: asyncio.StreamWriter, up: bool) -> None:
        pending: deque[tuple[float, bytes]] = deque()  # (due, chunk); b"": the end
        arrived = asyncio.Event()

        async def write_when_due() -> None:
            while True:
                while not pending:
                    arrived.clear()
                    await arrived.wait()
                wait = pending[0][0] - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                # One timer and one write per burst, not per chunk: whatever else is
                # due by now leaves with the head (a wake-up and a drain per chunk
                # is jitter a busy proxy adds, and production's path does not).
                now = time.monotonic()
                burst = []
                while pending and pending[0][0] <= now:
                    burst.append(pending.popleft()[1])
                if data := b"".join(burst):
                    dst.write(data)
                if not burst[-1]:
                    dst.close()
                    return
                await dst.drain()

        writer = asyncio.get_running_loop().create_task(write_when_due())
        try:
            while chunk := await src.read(CHUNK):
                self._count(chunk, up)
                pending.append((time.monotonic() + self.delay, chunk))
                arrived.set()
            pending.append((time.monotonic() + self.delay, b""))
            arrived.set()
            await writer
        finally:
            writer.cancel()

    def _count(self, chunk: bytes, up: bool) -> None:
        if up:
            self.bytes_up += len(chunk)
        else:
            self.bytes_down += len(chunk)
        if len(self.capture) < CAPTURE_BYTES:
            self.capture += chunk[: CAPTURE_BYTES - len(self.capture)]

    def set_cut(self, cut: bool) -> None:
        self.cut = cut
        if cut:
            for task in list(self._links):
                task.cancel()


def create_control_app(proxy: DelayProxy) -> web.Application:
    async def cut(request: web.Request) -> web.Response:
        proxy.set_cut(True)
        return web.json_response({"cut": True})

    async def restore(request: web.Request) -> web.Response:
        proxy.set_cut(False)
        return web.json_response({"cut": False})

    async def stats(request: web.Request) -> web.Response:
        return web.json_response(
            {
                "cut": proxy.cut,
                "delay_ms": proxy.delay * 1000,
                "bytes_up": proxy.bytes_up,
                "bytes_down": proxy.bytes_down,
                "connections": proxy.connections,
            }
        )

    async def seen(request: web.Request) -> web.Response:
        text = request.query.get("text", "").encode()
        if not text:
            return web.json_response({"error": "?text= is required"}, status=400)
        return web.json_response({"seen": text in proxy.capture})

    async def forget(request: web.Request) -> web.Response:
        proxy.capture.clear()
        return web.json_response({"forgot": True})

    app = web.Application()
    app.router.add_post("/cut", cut)
    app.router.add_post("/restore", restore)
    app.router.add_get("/stats", stats)
    app.router.add_get("/seen", seen)
    app.router.add_post("/forget", forget)
    return app


async def run(
    listen: tuple[str, int], target: tuple[str, int], delay: float, control: tuple[str, int]
) -> None:
    proxy = DelayProxy(target, delay)
    server = await asyncio.start_server(proxy.serve, *listen)
    runner = web.AppRunner(create_control_app(proxy), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, *control).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    print(
        f"delay proxy {listen[0]}:{listen[1]} -> {target[0]}:{target[1]}, {delay * 1000:g} ms",
        flush=True,
    )
    await stop.wait()
    server.close()
    proxy.set_cut(True)
    with contextlib.suppress(asyncio.CancelledError):
        await asyncio.sleep(0)
    await runner.cleanup()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m iofleet.delay_proxy", description=__doc__)
    parser.add_argument("--listen", type=address, required=True, help="HOST:PORT (loopback)")
    parser.add_argument("--target", type=address, required=True, help="HOST:PORT")
    parser.add_argument("--delay-ms", type=float, default=70.0, help="Added each way.")
    parser.add_argument("--control", type=address, required=True, help="HOST:PORT of /cut etc.")
    args = parser.parse_args(argv)
    asyncio.run(run(args.listen, args.target, args.delay_ms / 1000, args.control))
    return 0


if __name__ == "__main__":
    sys.exit(main())
