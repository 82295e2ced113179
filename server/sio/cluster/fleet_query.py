"""Which sockets are in a room, on every node: Socket.IO's `fetchSockets`, for apps.

python-socketio answers `get_participants` for this node only ("there is
currently no functionality to assemble a complete list of users across multiple
servers"). With the Redis fan-out, `fetch_sockets` asks every node over Redis
and gathers their answers (`server.sio.cluster.fanout.FanoutManager.fetch_sockets`): a
request on `<channel>#query`, which every node subscribes, and one reply per node
on the asking node's own `<channel>#reply#<host id>`. The number of nodes to wait
for is what Redis answered to the request's PUBLISH; a node that has not replied
within `QUERY_TIMEOUT_SECONDS` is left out and the log says how many answered.
Without Redis (one node), or on plain python-socketio, it answers this node's.

    from server.sio.cluster.fleet_query import fetch_sockets

    @sio.on("who")
    async def who(sid, data):
        return [s.sid for s in await fetch_sockets(sio, room=data["room"])]

Apps import this module (a seam, like `server.node.services`), never the fan-out.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

QUERY_TIMEOUT_SECONDS = 2.0


@dataclass(frozen=True)
class SocketInfo:
    """One Socket.IO socket somewhere in the fleet."""

    sid: str
    namespace: str
    rooms: tuple[str, ...]  # as python-socketio's `rooms(sid)`: its own sid among them
    node_id: str | None  # IOFLEET_NODE_ID of the node holding it (None on plain python-socketio)
    user: str | None  # the token's subject (the connection's id when anonymous)

    def as_wire(self) -> list[Any]:
        return [self.sid, self.namespace, list(self.rooms), self.node_id, self.user]

    @classmethod
    def from_wire(cls, item: Sequence[Any]) -> SocketInfo:
        sid, namespace, rooms, node_id, user = item
        return cls(str(sid), str(namespace), tuple(map(str, rooms)), node_id, user)


async def fetch_sockets(
    sio: Any, room: str | None = None, namespace: str = "/"
) -> list[SocketInfo]:
    """Every socket of `namespace` in `room` (all of the namespace when None), on every node."""
    across = getattr(sio.manager, "fetch_sockets", None)  # the Redis fan-out's
    if across is not None:
        return list(await across(namespace, room))
    return local_sockets(sio, namespace, room)


def local_sockets(sio: Any, namespace: str, room: str | None) -> list[SocketInfo]:
    """This node's sockets of `namespace` in `room`: O(members of the room)."""
    manager = sio.manager
    connections = getattr(sio, "connections", {})  # iofleet's, by Engine.IO sid
    node_id = getattr(sio, "node_id", None)
    found = []
    for sid, eio_sid in manager.get_participants(namespace, room):
        connection = connections.get(eio_sid)
        found.append(
            SocketInfo(
                sid=sid,
                namespace=namespace,
                rooms=tuple(manager.get_rooms(sid, namespace)),
                node_id=node_id,
                user=getattr(connection, "user", None),
            )
        )
    return found


@dataclass
class PendingQuery:
    """The replies to one request, complete once as many as Redis counted nodes."""

    replies: list[list[SocketInfo]] = field(default_factory=list)
    expected: int | None = None
    complete: asyncio.Event = field(default_factory=asyncio.Event)

    def add(self, sockets: list[SocketInfo]) -> None:
        self.replies.append(sockets)
        self._check()

    def expect(self, nodes: int) -> None:
        self.expected = nodes
        self._check()

    def _check(self) -> None:
        if self.expected is not None and len(self.replies) >= self.expected:
            self.complete.set()

    def sockets(self) -> list[SocketInfo]:
        return [info for reply in self.replies for info in reply]
