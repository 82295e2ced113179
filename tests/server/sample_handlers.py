"""A third-party app for IOFLEET_HANDLERS, written with the plain python-socketio API."""

from __future__ import annotations

from typing import Any

import socketio


def register(sio: socketio.AsyncServer) -> None:
    @sio.on("echo")
    async def echo(sid: str, data: Any = None) -> Any:
        return {"echo": data}

    @sio.on("boom")
    async def boom(sid: str, data: Any = None) -> Any:
        raise RuntimeError("kaboom with a secret-looking detail")
