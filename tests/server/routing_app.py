"""The chat app plus what crosses nodes by sid, for tests/server/test_routing.py,
written with the plain python-socketio API: `ask` `{to, question}` asks the
socket `to` (on any node) `question` and acks its answer (an emit with a callback
to a sid, `sio.call`); `tell` `{to, text}` emits `note` to the socket `to`;
`announce` `{text}` emits `note` to every socket of the namespace; `burst`
`{room, count}` emits `count` `tick` events to `room` at once (concurrently, as
many handlers emitting together would); `remember` `{key, value}` keeps a value
in the socket's session and `recall` `{key}` answers it (and the session's
user); `count` on `/slow` (whose connect handler takes 0.3 s) acks its
argument; `who` `{room}` answers the sockets in
`room` (the whole namespace when absent) on every node, with
`server.sio.cluster.fleet_query.fetch_sockets`."""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

from server.apps import chat
from server.sio.cluster.fleet_query import fetch_sockets


def register(sio: socketio.AsyncServer) -> None:
    chat.register(sio)

    @sio.on("ask")
    async def ask(sid: str, data: Any = None) -> Any:
        answer = await sio.call("question", data["question"], to=data["to"], timeout=5)
        return {"answer": answer}

    @sio.on("tell")
    async def tell(sid: str, data: Any = None) -> Any:
        await sio.emit("note", data["text"], to=data["to"])
        return {"ok": True}

    @sio.on("announce")
    async def announce(sid: str, data: Any = None) -> Any:
        await sio.emit("note", data["text"])
        return {"ok": True}

    # A namespace whose connect handler takes a while: what a client sends right
    # behind its CONNECT must wait for it and keep its order.
    @sio.on("connect", namespace="/slow")
    async def slow_connect(sid: str, environ: Any, auth: Any = None) -> None:
        await asyncio.sleep(0.3)

    @sio.on("count", namespace="/slow")
    async def count(sid: str, data: Any = None) -> Any:
        return data

    @sio.on("remember")
    async def remember(sid: str, data: Any = None) -> Any:
        async with sio.session(sid) as session:
            session[data["key"]] = data["value"]
        return {"ok": True}

    @sio.on("recall")
    async def recall(sid: str, data: Any = None) -> Any:
        session = await sio.get_session(sid)
        return {"value": session.get(data["key"]), "user": session.get("user")}

    @sio.on("burst")
    async def burst(sid: str, data: Any = None) -> Any:
        room, count = data["room"], int(data["count"])
        await asyncio.gather(*(sio.emit("tick", n, room=room) for n in range(count)))
        return {"ok": True}

    @sio.on("who")
    async def who(sid: str, data: Any = None) -> Any:
        sockets = await fetch_sockets(sio, room=(data or {}).get("room"))
        return sorted([s.sid, s.node_id, s.user, sorted(s.rooms)] for s in sockets)
