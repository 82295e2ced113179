"""A test app (IOFLEET_HANDLERS) for room state and the sent-packets metric, written
with the plain python-socketio API: the chat app, and on `/` and `/other`:
`join` / `leave` `{room}` -> ack `{ok}` (the room limit's refusal as the server
words it); `close` `{room}` closes the room on every node; `put` `{sid, room}`
puts the socket `sid` (on any node) in `room`; `kick` `{sid}` disconnects the
socket `sid` (on any node) from the namespace; `rooms` -> ack the caller's rooms.
On `/` only, what a test counts: `to_room` `{room}` emits `note` to the room,
`to_me` emits `note` to the caller, `binary_to_me` and `binary_to_room` `{room}`
emit `blob` with a binary attachment, `echo` acks its argument. None of them
acks unless the client asks."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import socketio

from server.apps import chat

NAMESPACES = ("/", "/other")
BLOB = b"\x00\x01binary\xff"


def register(sio: socketio.AsyncServer) -> None:
    chat.register(sio)  # its greeting tells a test client it is connected
    for namespace in NAMESPACES:
        register_rooms(sio, namespace)

    @sio.on("to_room")
    async def to_room(sid: str, data: Any) -> None:
        await sio.emit("note", "to the room", room=data["room"])

    @sio.on("to_me")
    async def to_me(sid: str, data: Any = None) -> None:
        await sio.emit("note", "to you", to=sid)

    @sio.on("binary_to_me")
    async def binary_to_me(sid: str, data: Any = None) -> None:
        await sio.emit("blob", BLOB, to=sid)

    @sio.on("binary_to_room")
    async def binary_to_room(sid: str, data: Any) -> None:
        await sio.emit("blob", BLOB, room=data["room"])

    @sio.on("echo")
    async def echo(sid: str, data: Any = None) -> Any:
        return data


def register_rooms(sio: socketio.AsyncServer, namespace: str) -> None:
    actions: dict[str, Callable[[str, Any], Awaitable[None]]] = {
        "join": lambda sid, data: sio.enter_room(sid, data["room"], namespace=namespace),
        "leave": lambda sid, data: sio.leave_room(sid, data["room"], namespace=namespace),
        "close": lambda sid, data: sio.close_room(data["room"], namespace=namespace),
        "put": lambda sid, data: sio.enter_room(data["sid"], data["room"], namespace=namespace),
        "kick": lambda sid, data: sio.disconnect(data["sid"], namespace=namespace),
    }
    for event, action in actions.items():

        async def acting(sid: str, data: Any, action: Any = action) -> Any:
            await action(sid, data)
            return {"ok": True}

        sio.on(event, acting, namespace=namespace)

    @sio.on("rooms", namespace=namespace)
    async def rooms(sid: str, data: Any = None) -> Any:
        return sorted(r for r in sio.rooms(sid, namespace=namespace) if r != sid)
