"""The baseline: plain python-socketio on aiohttp running the same chat app.

No iofleet guards, stdlib json, the default asyncio loop: what a team would
start from. `python -m bench.baseline_server PORT [--probe]` (`--probe` adds the
`debug:resources` event of `bench.resource_probe`, for the churn benchmark).
"""

from __future__ import annotations

import sys

import socketio
from aiohttp import web

from bench.resource_probe import register_probe
from server.apps.chat import register


def main() -> None:
    port = int(sys.argv[1])
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
    register(sio)
    if "--probe" in sys.argv[2:]:
        register_probe(sio)
    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
