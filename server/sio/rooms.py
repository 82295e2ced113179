"""Room state on this node, with one owner: the manager's room index.

python-socketio keeps `manager.rooms` (namespace -> room -> {sid: eio_sid}) and
changes it only through four methods: `basic_enter_room`, `basic_leave_room`,
`basic_disconnect` and `basic_close_room` (which leaves each member). Every room
change goes through them: a connect, a join, a leave, a disconnect, and what
another node publishes (its `enter_room`, `leave_room`, `close_room` or
`disconnect` for a sid on this node). `RoomIndex` sits on that funnel, so what it
derives cannot drift from the library's rooms:
- each sid's rooms, indexed: the library answers "which rooms is this sid in"
  (`get_rooms`, the cleanup in `basic_disconnect`) by scanning every room of the
  namespace, O(rooms on the node) per disconnect and O(connections²) for a node
  emptying out (a drain); with the index both cost O(rooms of that client);
- per-owner room counts, for `IOFLEET_MAX_ROOMS_PER_USER`: an owner is whoever
  the limit applies to (the user with JWT auth, the connection itself without an
  identity, `IOFLEET_AUTH=none`), given once per sid by the server at admission;
- the number of application rooms per namespace (the `iofleet_rooms` gauge);
- one hook, `on_room_occupancy`, when a room gets its first member on this node
  or loses its last (the fan-out subscribes and unsubscribes room channels
  there), and one, `on_membership`, when a sid joins or leaves an application
  room (recovery records the session's rooms there).
Every method costs O(1), `basic_disconnect` O(rooms of that client).

Application rooms are the rooms an application names: not the namespace's
member list (room None) and not a sid's own room (room == sid; the library
refuses any other sid in it).
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import socketio

RoomKey = tuple[str, str]
"""(namespace, room)"""
SidKey = tuple[str, str]
"""(namespace, sid)"""


def is_app_room(sid: str, room: str | None) -> bool:
    """Whether `room`, entered or left by `sid`, is a room the application named."""
    return room is not None and room != sid


class RoomIndex:
    """A mixin for python-socketio managers, the one owner of room state (see the
    module docstring). Put it first in the bases:
    `class M(RoomIndex, socketio.AsyncManager)`."""

    rooms: dict[str, dict[str | None, Any]]
    callbacks: dict[str, Any]
    pending_connect: dict[str, list[str]]
    pending_disconnect: dict[str, list[str]]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.sid_rooms: dict[SidKey, set[str | None]] = {}
        self._owners: dict[SidKey, str] = {}
        # owner -> (namespace, room) -> how many of the owner's sids are in it
        self._owned: dict[str, Counter[RoomKey]] = {}
        self._app_rooms: Counter[str] = Counter()  # namespace -> application rooms here

    # --- the library's funnel ------------------------------------------------------

    def basic_enter_room(
        self, sid: str, namespace: str, room: str | None, eio_sid: str | None = None
    ) -> None:
        members = self.rooms.get(namespace, {}).get(room)
        was_in = members is not None and sid in members
        # Empty, not only absent: the library, refusing a sid that is not connected
        # (KeyError), leaves the room it made behind, empty.
        opens = not members
        # The library checks (and may refuse) first; nothing here changes if it does.
        super().basic_enter_room(sid, namespace, room, eio_sid=eio_sid)  # type: ignore[misc]
        if was_in:
            return
        key = (namespace, sid)
        joined = self.sid_rooms.get(key)
        if joined is None:
            joined = self.sid_rooms[key] = set()
        joined.add(room)
        app_room = is_app_room(sid, room)
        if app_room:
            owner = self._owners.get(key)
            if owner is not None:
                self._owned.setdefault(owner, Counter())[(namespace, room)] += 1  # type: ignore[index]
            self.on_membership(sid, namespace, room, True)  # type: ignore[arg-type]
        if opens:
            if app_room:
                self._app_rooms[namespace] += 1
            self.on_room_occupancy(namespace, room, True)

    def basic_leave_room(self, sid: str, namespace: str, room: str | None) -> None:
        members = self.rooms.get(namespace, {}).get(room)
        if members is None or sid not in members:
            return  # the library does nothing either
        super().basic_leave_room(sid, namespace, room)  # type: ignore[misc]
        key = (namespace, sid)
        joined = self.sid_rooms.get(key)
        if joined is not None:
            joined.discard(room)
            if not joined:
                del self.sid_rooms[key]
        app_room = is_app_room(sid, room)
        if app_room:
            owner = self._owners.get(key)
            if owner is not None:
                self._release(owner, (namespace, room))  # type: ignore[arg-type]
            self.on_membership(sid, namespace, room, False)  # type: ignore[arg-type]
        if room not in self.rooms.get(namespace, {}):
            if app_room:
                self._app_rooms[namespace] -= 1
                if not self._app_rooms[namespace]:
                    del self._app_rooms[namespace]
            self.on_room_occupancy(namespace, room, False)

    def basic_disconnect(self, sid: str, namespace: str, **kwargs: Any) -> None:
        # What the library's version does, without its scan of every room.
        for room in list(self.sid_rooms.get((namespace, sid), ())):
            self.basic_leave_room(sid, namespace, room)
        self._owners.pop((namespace, sid), None)
        self.callbacks.pop(sid, None)
        for pending in (self.pending_connect, self.pending_disconnect):
            sids = pending.get(namespace)
            if sids is not None and sid in sids:
                sids.remove(sid)
                if not sids:
                    del pending[namespace]

    def get_rooms(self, sid: str, namespace: str) -> list[str]:
        return [r for r in self.sid_rooms.get((namespace, sid), ()) if r is not None]

    # --- hooks (no-ops here) -------------------------------------------------------

    def on_room_occupancy(self, namespace: str, room: str | None, occupied: bool) -> None:
        """`room` got its first member on this node (`occupied`) or lost its last:
        application rooms, sid rooms and the namespace (room None) alike."""

    def on_membership(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        """`sid` joined (`joined`) or left the application room `room`."""

    # --- owners and the room limit -------------------------------------------------

    def assign_owner(self, sid: str, namespace: str, owner: str) -> None:
        """Count `sid`'s rooms (those it is in already, too) as `owner`'s, until it
        disconnects. Ignored for a sid not connected here."""
        key = (namespace, sid)
        joined = self.sid_rooms.get(key)
        previous = self._owners.get(key)
        if joined is None or previous == owner:
            return
        app_rooms = [(namespace, room) for room in joined if is_app_room(sid, room)]
        if previous is not None:
            for room_key in app_rooms:
                self._release(previous, room_key)  # type: ignore[arg-type]
        self._owners[key] = owner
        if app_rooms:
            self._owned.setdefault(owner, Counter()).update(app_rooms)  # type: ignore[arg-type]

    def owner_of(self, sid: str, namespace: str) -> str | None:
        return self._owners.get((namespace, sid))

    def owned_rooms(self, owner: str) -> int:
        """How many application rooms (per namespace) the owner's sids are in here."""
        return len(self._owned.get(owner, ()))

    def would_exceed(self, sid: str, namespace: str, room: str, limit: int) -> bool:
        """Joining `room` would put the sid's owner in more than `limit` rooms."""
        owner = self._owners.get((namespace, sid))
        if owner is None or not is_app_room(sid, room):
            return False
        owned = self._owned.get(owner)
        if owned is None:
            return limit <= 0
        return (namespace, room) not in owned and len(owned) >= limit

    def app_room_count(self, namespace: str) -> int:
        """Application rooms of `namespace` with a member on this node."""
        return self._app_rooms.get(namespace, 0)

    def _release(self, owner: str, key: RoomKey) -> None:
        owned = self._owned[owner]
        owned[key] -= 1
        if owned[key] <= 0:
            del owned[key]
            if not owned:
                del self._owned[owner]


class IndexedManager(RoomIndex, socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's in-memory manager (one node, no Redis), indexed."""
