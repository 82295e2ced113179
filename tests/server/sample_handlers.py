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

    @sio.on("handshake")
    async def handshake(sid: str, data: Any = None) -> Any:
        """What the application sees of the connection's handshake (public API)."""
        environ = sio.get_environ(sid)
        return {
            "remote_addr": environ.get("REMOTE_ADDR"),
            "remote_port": environ.get("REMOTE_PORT"),
            "query": environ.get("QUERY_STRING"),
            "x_trace": environ.get("HTTP_X_TRACE"),
            "via_aiohttp": "aiohttp.request" in environ,
        }
