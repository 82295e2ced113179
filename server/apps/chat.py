"""The bundled chat app (the default IOFLEET_HANDLERS).

Events (DESIGN.md): `room:join` `{room}` -> ack `{ok, room, members}` (the users
of at most 100 of the room's connections on this node);
`room:leave` `{room}`; `chat:message` `{room, text}` -> everyone in the room on
every node gets `chat:message` `{room, text, from, ts}`; `typing:start` /
`typing:stop` `{room}` -> `typing:update` `{room, user, typing}` to the others,
at most once per 3 s per user and room. Each connection is greeted with
`server:hello` `{node_id}` (the demo page shows the node). Matching and WebRTC
signaling are in `server.apps.matching`. Written against the plain
python-socketio API.
"""

from __future__ import annotations

import socket
import time
from itertools import islice
from typing import Any

import socketio

from server.apps import matching
from server.apps.payloads import BadPayload, fail, room_of, text_of

TYPING_INTERVAL_SECONDS = 3.0
HELLO_EVENT = "server:hello"
# A join's `members` names the users of at most this many of the room's connections on
# this node: a join costs the same in a room of 100,000 as in a room of ten (a full list
# made every join of a big room quadratic, and no screen shows 100,000 names).
MEMBERS_SCANNED = 100


async def user_of(sio: socketio.AsyncServer, sid: str) -> str:
    session = await sio.get_session(sid)
    return str(session.get("user", "anonymous"))


class Chat:
    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        # (user, room) -> when that user's last typing:start went out.
        self._typing_sent: dict[tuple[str, str], float] = {}

    def register(self) -> None:
        self.sio.on("room:join", self.join)
        self.sio.on("room:leave", self.leave)
        self.sio.on("chat:message", self.message)
        self.sio.on("typing:start", self.typing_start)
        self.sio.on("typing:stop", self.typing_stop)

    async def join(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            room = room_of(data)
        except BadPayload as error:
            return fail(str(error))
        await self.sio.enter_room(sid, room)
        return {"ok": True, "room": room, "members": await self.members(room)}

    async def members(self, room: str) -> list[str]:
        """Users in the room on this node (each node knows its own sockets), read from
        at most MEMBERS_SCANNED of its connections."""
        users = set()
        participants = self.sio.manager.get_participants("/", room)
        for sid, _ in islice(participants, MEMBERS_SCANNED):
            users.add(await user_of(self.sio, sid))
        return sorted(users)

    async def leave(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            room = room_of(data)
        except BadPayload as error:
            return fail(str(error))
        await self.sio.leave_room(sid, room)
        self._typing_sent.pop((await user_of(self.sio, sid), room), None)
        return {"ok": True, "room": room}

    async def message(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            room = room_of(data)
            text = text_of(data)
        except BadPayload as error:
            return fail(str(error))
        if room not in self.sio.rooms(sid):
            return fail(f"join {room} first")
        user = await user_of(self.sio, sid)
        payload = {"room": room, "text": text, "from": user, "ts": int(time.time() * 1000)}
        await self.sio.emit("chat:message", payload, room=room)
        return {"ok": True}

    async def typing_start(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._typing(sid, data, typing=True)

    async def typing_stop(self, sid: str, data: Any = None) -> dict[str, Any]:
        return await self._typing(sid, data, typing=False)

    async def _typing(self, sid: str, data: Any, typing: bool) -> dict[str, Any]:
        try:
            room = room_of(data)
        except BadPayload as error:
            return fail(str(error))
        if room not in self.sio.rooms(sid):
            return fail(f"join {room} first")
        user = await user_of(self.sio, sid)
        key = (user, room)
        now = time.monotonic()
        if typing:
            last = self._typing_sent.get(key)
            if last is not None and now - last < TYPING_INTERVAL_SECONDS:
                return {"ok": True, "sent": False}
            self._typing_sent[key] = now
        elif self._typing_sent.pop(key, None) is None:
            return {"ok": True, "sent": False}  # no start went out, so no stop either
        update = {"room": room, "user": user, "typing": typing}
        await self.sio.emit("typing:update", update, room=room, skip_sid=sid)
        return {"ok": True, "sent": True}

    async def on_disconnect(self, user: str) -> None:
        for key in [k for k in self._typing_sent if k[0] == user]:
            del self._typing_sent[key]


def node_id_of(sio: socketio.AsyncServer) -> str:
    """iofleet's server knows its node id; plain python-socketio has the host name."""
    node_id = getattr(sio, "node_id", None)
    return node_id if isinstance(node_id, str) else socket.gethostname()


def register(sio: socketio.AsyncServer) -> None:
    chat = Chat(sio)
    chat.register()
    matcher = matching.register(sio)
    hello = {"node_id": node_id_of(sio)}

    async def connect(sid: str, environ: dict[str, Any], auth: Any = None) -> None:
        # The CONNECT packet goes out when this handler returns; the greeting
        # must follow it, so it goes from a task. Straight to the socket, not
        # through the fan-out (it is for a client on this node).
        sio.start_background_task(sio.emit, HELLO_EVENT, hello, to=sid, ignore_queue=True)

    sio.on("connect", connect)

    async def disconnect(sid: str, reason: object = None) -> None:
        user = await user_of(sio, sid)
        await chat.on_disconnect(user)
        await matcher.on_disconnect(sid)

    sio.on("disconnect", disconnect)
