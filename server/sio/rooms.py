"""Which rooms each Socket.IO connection, and each owner, is in.

python-socketio can only answer "which rooms is this sid in" by scanning every
room on the node, so a room limit checked that way costs O(rooms on the node)
per join, times the owner's connections. The ledger is kept as rooms change,
so a join, a leave and a disconnect cost O(rooms of that client).

An owner is whoever the room limit applies to: the user with JWT auth, the
connection itself without an identity (`IOFLEET_AUTH=none`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import socketio

RoomKey = tuple[str, str]
"""(namespace, room)"""


@dataclass
class _Member:
    owner: str
    namespace: str
    rooms: set[str] = field(default_factory=set)


class RoomLedger:
    def __init__(self) -> None:
        self._members: dict[str, _Member] = {}
        # owner -> (namespace, room) -> how many of the owner's connections are in it
        self._owned: dict[str, Counter[RoomKey]] = {}
        self._owner_sids: dict[str, set[str]] = {}

    def __contains__(self, sid: object) -> bool:
        return sid in self._members

    def __len__(self) -> int:
        return len(self._members)

    def add(self, sid: str, namespace: str, owner: str) -> None:
        self._members[sid] = _Member(owner=owner, namespace=namespace)
        self._owner_sids.setdefault(owner, set()).add(sid)

    def remove(self, sid: str) -> None:
        """The connection is gone: O(its rooms)."""
        member = self._members.pop(sid, None)
        if member is None:
            return
        for room in member.rooms:
            self._release(member.owner, (member.namespace, room))
        sids = self._owner_sids[member.owner]
        sids.discard(sid)
        if not sids:
            del self._owner_sids[member.owner]

    def join(self, sid: str, room: str) -> None:
        member = self._members.get(sid)
        if member is None or room in member.rooms:
            return
        member.rooms.add(room)
        self._owned.setdefault(member.owner, Counter())[(member.namespace, room)] += 1

    def leave(self, sid: str, room: str) -> None:
        member = self._members.get(sid)
        if member is None or room not in member.rooms:
            return
        member.rooms.discard(room)
        self._release(member.owner, (member.namespace, room))

    def rooms_of(self, sid: str) -> set[str]:
        member = self._members.get(sid)
        return member.rooms if member is not None else set()

    def would_exceed(self, sid: str, room: str, limit: int) -> bool:
        """Joining `room` would put the sid's owner in more than `limit` rooms."""
        member = self._members.get(sid)
        if member is None:
            return False
        owned = self._owned.get(member.owner)
        if owned is None or (member.namespace, room) in owned:
            return False
        return len(owned) >= limit

    def prune(self, sid: str, is_in: Callable[[str, str, str], bool]) -> None:
        """Drop rooms the library left behind our back (a `close_room` published
        by another node): `is_in(sid, namespace, room)` says what is still true.
        O(connections and rooms of the sid's owner); run only at the limit."""
        member = self._members.get(sid)
        if member is None:
            return
        for other_sid in list(self._owner_sids.get(member.owner, ())):
            other = self._members[other_sid]
            for room in [r for r in other.rooms if not is_in(other_sid, other.namespace, r)]:
                self.leave(other_sid, room)

    def owned_count(self, owner: str) -> int:
        return len(self._owned.get(owner, ()))

    def _release(self, owner: str, key: RoomKey) -> None:
        owned = self._owned.get(owner)
        if owned is None:
            return
        owned[key] -= 1
        if owned[key] <= 0:
            del owned[key]
        if not owned:
            del self._owned[owner]


class RoomIndex:
    """A mixin for python-socketio managers: every sid's rooms, indexed.

    The library's manager answers "which rooms is this sid in" (`get_rooms`, and
    the cleanup in `basic_disconnect`) by scanning every room in the namespace:
    O(rooms on the node) per disconnect, O(connections²) for a node emptying
    out (a drain). With the index both cost O(rooms of that client). Every
    change to `rooms` goes through `basic_enter_room` / `basic_leave_room`
    (connect, join, leave, `close_room` from any node), so the index follows it.
    Put it first in the bases: `class M(RoomIndex, socketio.AsyncManager)`.
    """

    rooms: dict[str, dict[str | None, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sid_rooms: dict[tuple[str, str], set[str | None]] = {}

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        self.sid_rooms.setdefault((namespace, sid), set()).add(room)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        key = (namespace, sid)
        joined = self.sid_rooms.get(key)
        if joined is not None:
            joined.discard(room)
            if not joined:
                del self.sid_rooms[key]

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # What the library's version does, without its scan of every room.
        for room in list(self.sid_rooms.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self.sid_rooms.get((namespace, sid), ()) if r is not None]


class IndexedManager(RoomIndex, socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's in-memory manager (one node, no Redis), indexed."""
