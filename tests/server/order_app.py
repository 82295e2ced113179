"""A test app (IOFLEET_HANDLERS) for the order of a client's own packets: each
`mix` call broadcasts to the caller's room, emits to the caller's sid and then
acks, all in one handler step; `big` acks with a payload of `size` bytes."""

from __future__ import annotations

from typing import Any

import socketio

from server.apps import chat


def register(sio: socketio.AsyncServer) -> None:
    chat.register(sio)

    @sio.on("mix")
    async def mix(sid: str, data: Any = None) -> Any:
        k = data["k"]
        await sio.emit("seq", {"k": k, "part": "room"}, room=data["room"])
        await sio.emit("seq", {"k": k, "part": "sid"}, to=sid)
        return {"k": k}

    @sio.on("big")
    async def big(sid: str, data: Any = None) -> Any:
        return "z" * int(data["size"])
