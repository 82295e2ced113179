"""`python -m server`: run one iofleet node."""

from __future__ import annotations

import asyncio
import gc
import logging
import signal
import sys
from types import ModuleType

from server.core.jsonlog import configure_logging
from server.node.app import ListenError, create_app, serve
from server.node.state import NODE_KEY
from server.settings import Settings, SettingsError, load_settings

uvloop: ModuleType | None
try:
    import uvloop
except ImportError:  # not on every platform; the default loop works too
    uvloop = None

log = logging.getLogger("iofleet.main")

# The cyclic collector's thresholds (`gc.set_threshold`): young generations as
# Python's defaults, the full collection 100 times less often. A full collection
# walks every live object, and a node holds some 150 per connection (over a
# million at 10,000 connections); at the default threshold (10) they ran often
# enough during connection bursts to take about a quarter of the server's time
# (connects/s +35% in bench/fanout_bench.py's connect case). Connections that end
# release what they hold without the collector (server/eio/socket.py), so little
# waits for it.
GC_THRESHOLDS = (700, 10, 1000)


def tune_gc() -> None:
    gc.set_threshold(*GC_THRESHOLDS)


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"iofleet: {error}", file=sys.stderr)
        return 2
    configure_logging(settings.node_id, settings.log_level)
    tune_gc()
    if settings.uvloop and uvloop is not None:
        # libuv's loop: measurably faster socket I/O (bench/server_bench.py).
        asyncio.set_event_loop_policy(uvloop.EventLoopPolicy())
    try:
        asyncio.run(run(settings))
    except ListenError as error:
        log.error(str(error), extra={"event": "server.listen_failed"})
        return 1
    return 0


async def run(settings: Settings) -> None:
    app = create_app(settings)
    node = app[NODE_KEY]
    stop = asyncio.Event()

    def on_sigterm() -> None:
        # First SIGTERM: the paced drain, exit 0 when it is done. A second one: stop now.
        if not node.drain.start("SIGTERM"):
            log.warning("SIGTERM while draining; stopping now", extra={"event": "signal.term"})
            stop.set()

    loop = asyncio.get_running_loop()
    loop.add_signal_handler(signal.SIGTERM, on_sigterm)
    loop.add_signal_handler(signal.SIGINT, stop.set)
    await serve(app, stop)


if __name__ == "__main__":
    sys.exit(main())
