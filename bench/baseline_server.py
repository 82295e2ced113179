"""The baseline: plain python-socketio on aiohttp running the same chat app.

No iofleet guards, stdlib json, the default asyncio loop: what a team would
start from. `python -m bench.baseline_server PORT [--probe] [--redis URL]`
(`--probe` adds the `debug:resources` event of `bench.resource_probe`, for the
churn benchmark; `--redis` fans out through python-socketio's own
`AsyncRedisManager`, as the fan-out benchmark runs it). The app is
`bench.bench_app`: the chat app plus an `echo` event.
"""

from __future__ import annotations

import argparse

import socketio
from aiohttp import web

from bench.bench_app import register
from bench.resource_probe import register_probe


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("port", type=int)
    parser.add_argument("--probe", action="store_true")
    parser.add_argument("--redis", default=None, help="redis:// URL for cross-node fan-out")
    args = parser.parse_args()
    manager = socketio.AsyncRedisManager(args.redis) if args.redis else None
    sio = socketio.AsyncServer(
        async_mode="aiohttp", cors_allowed_origins=[], client_manager=manager
    )
    register(sio)
    if args.probe:
        register_probe(sio)
    app = web.Application()
    sio.attach(app)
    web.run_app(app, host="127.0.0.1", port=args.port, access_log=None, print=None)


if __name__ == "__main__":
    main()
