"""`python -m relay`: the inter-region relay of one region (settings: IOFLEET_RELAY_*)."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys

from aiohttp import web

from relay.admin import create_admin_app
from relay.metrics import RelayMetrics
from relay.relay import Relay
from relay.settings import Settings, load_settings
from server.core.jsonlog import configure_logging
from server.settings import SettingsError


async def serve(settings: Settings) -> None:
    relay = Relay(settings, RelayMetrics())
    runner = web.AppRunner(create_admin_app(relay), access_log=None)
    await runner.setup()
    await web.TCPSite(runner, settings.admin_host, settings.admin_port).start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    work = loop.create_task(relay.run())
    try:
        await asyncio.wait({work, loop.create_task(stop.wait())}, return_when="FIRST_COMPLETED")
    finally:
        work.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await work
        await relay.close()
        await runner.cleanup()


def main() -> int:
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"relay: {error}", file=sys.stderr)
        return 2
    configure_logging(f"relay-{settings.region}")
    asyncio.run(serve(settings))
    return 0


if __name__ == "__main__":
    sys.exit(main())
