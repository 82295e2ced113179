"""The baseline: plain python-socketio on aiohttp running the same chat app.

No iofleet guards, stdlib json, the default asyncio loop: what a team would
start from. `python -m bench.baseline_server PORT`.
"""

from __future__ import annotations

import sys

import socketio
from aiohttp import web

from server.apps.chat import register


def main() -> None:
    port = int(sys.argv[1])
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
    register(sio)
    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=port, access_log=None, print=None)


if __name__ == "__main__":
    main()
