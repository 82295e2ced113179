"""The app every server in `bench/fanout_bench.py` runs: the bundled chat app
plus `echo` (acks its payload back), the round trip the benchmark times.

`bench/node_server.mjs` is the same app for Node. iofleet loads it as
`IOFLEET_HANDLERS=bench.bench_app:register`; the baseline server registers it too.
"""

from __future__ import annotations

from typing import Any

import socketio

from server.apps import chat

ECHO_EVENT = "echo"


def register(sio: socketio.AsyncServer) -> None:
    chat.register(sio)

    async def echo(sid: str, data: Any = None) -> Any:
        return data

    sio.on(ECHO_EVENT, echo)
