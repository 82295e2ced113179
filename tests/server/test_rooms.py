"""The room index (server/sio/rooms.py): the one owner of room state on a node.

Every room change goes through the library's `basic_*` methods, so the index,
the per-owner counts and the fan-out's occupancy hook follow `manager.rooms`
whatever the order of joins, leaves, closes and disconnects.
"""

from __future__ import annotations

from collections import Counter
from typing import Any

import pytest
import socketio
from hypothesis import given, settings
from hypothesis import strategies as st

from server.sio.rooms import IndexedManager, RoomIndex

NAMESPACES = ("/", "/other")
ROOMS = ("r1", "r2", "r3", "r4")


class RecordingManager(IndexedManager):
    """The indexed manager, recording what its hooks are told."""

    def __init__(self) -> None:
        super().__init__()
        self.occupied: set[tuple[str, str | None]] = set()
        self.memberships: set[tuple[str, str, str]] = set()

    def on_room_occupancy(self, namespace: str, room: str | None, occupied: bool) -> None:
        key = (namespace, room)
        assert (key in self.occupied) != occupied, f"occupancy told twice: {key}"
        (self.occupied.add if occupied else self.occupied.discard)(key)

    def on_membership(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        key = (sid, namespace, room)
        assert (key in self.memberships) != joined, f"membership told twice: {key}"
        (self.memberships.add if joined else self.memberships.discard)(key)


def assert_agrees(manager: RecordingManager, owners: dict[tuple[str, str], str]) -> None:
    """Everything the index holds, recomputed from the library's `rooms`."""
    sid_rooms: dict[tuple[str, str], set[str | None]] = {}
    owned: dict[str, set[tuple[str, str]]] = {}
    memberships = set()
    app_rooms: Counter[str] = Counter()
    for namespace, by_room in manager.rooms.items():
        for room, members in by_room.items():
            if not members:
                continue  # left by the library's refusal of a sid not connected (below)
            app_room = room is not None and room not in members
            app_rooms[namespace] += app_room
            for sid in members:
                sid_rooms.setdefault((namespace, sid), set()).add(room)
                if app_room:
                    memberships.add((sid, namespace, room))
                    owner = owners.get((namespace, sid))
                    if owner is not None:
                        owned.setdefault(owner, set()).add((namespace, room))
    assert manager.sid_rooms == sid_rooms
    assert manager.memberships == memberships
    assert manager.occupied == {
        (ns, room)
        for ns, by_room in manager.rooms.items()
        for room, members in by_room.items()
        if members
    }
    for namespace in NAMESPACES:
        assert manager.app_room_count(namespace) == app_rooms[namespace]
    for owner in set(owners.values()):
        assert manager.owned_rooms(owner) == len(owned.get(owner, ()))
    for (namespace, sid), owner in owners.items():
        assert manager.owner_of(sid, namespace) == owner
        for room in ROOMS:
            held = (namespace, room) in owned.get(owner, set())
            at_limit = len(owned.get(owner, ())) >= 2
            assert manager.would_exceed(sid, namespace, room, limit=2) == (at_limit and not held)


STEP = st.one_of(
    st.tuples(st.just("connect"), st.sampled_from(NAMESPACES), st.integers(0, 3)),
    st.tuples(st.just("join"), st.integers(0, 7), st.sampled_from(ROOMS)),
    st.tuples(st.just("leave"), st.integers(0, 7), st.sampled_from(ROOMS)),
    st.tuples(st.just("close"), st.sampled_from(NAMESPACES), st.sampled_from(ROOMS)),
    st.tuples(st.just("disconnect"), st.integers(0, 7), st.just(None)),
    # An application entering a sid that is gone: the library refuses (KeyError) but
    # leaves the room behind, empty.
    st.tuples(st.just("join_gone"), st.sampled_from(NAMESPACES), st.sampled_from(ROOMS)),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(STEP, max_size=60))
async def test_the_index_cannot_disagree_with_the_library(steps: list[tuple[Any, ...]]) -> None:
    """Random connects (each sid given one of 2 owners: two tabs of a user, on two
    namespaces), joins, leaves, closes and disconnects, and joins of a sid that is
    gone: after each step the sid
    index, the per-owner counts, the room limit, the room count and both hooks
    say what the library's `rooms` says."""
    manager = RecordingManager()
    socketio.AsyncServer(client_manager=manager)
    connected: list[tuple[str, str]] = []  # (namespace, sid), in connect order
    owners: dict[tuple[str, str], str] = {}
    for index, step in enumerate(steps):
        kind = step[0]
        if kind == "connect":
            namespace, eio = step[1], step[2]
            sid = await manager.connect(f"eio-{index}-{eio}", namespace)
            owner = f"owner-{eio % 2}"
            manager.assign_owner(sid, namespace, owner)
            connected.append((namespace, sid))
            owners[(namespace, sid)] = owner
        elif kind == "close":
            manager.basic_close_room(step[2], step[1])
        elif kind == "join_gone":
            if step[1] in manager.rooms:
                with pytest.raises(KeyError):
                    manager.basic_enter_room("gone-sid", step[1], step[2])
        elif connected:
            namespace, sid = connected[step[1] % len(connected)]
            if kind == "join" and (namespace, sid) in owners:
                manager.basic_enter_room(sid, namespace, step[2])
            elif kind == "leave":
                manager.basic_leave_room(sid, namespace, step[2])
            elif kind == "disconnect":
                manager.basic_disconnect(sid, namespace)
                owners.pop((namespace, sid), None)
        assert_agrees(manager, owners)
    for namespace, sid in connected:
        manager.basic_disconnect(sid, namespace)
    assert manager.sid_rooms == {} and manager.occupied == set() and manager.memberships == set()
    assert all(manager.owned_rooms(owner) == 0 for owner in ("owner-0", "owner-1"))


async def test_a_close_room_from_anywhere_frees_the_owners_count() -> None:
    """`basic_close_room` is what the Redis listener runs for another node's
    `close_room`: the owner's count drops with it, no repair needed."""
    manager = RecordingManager()
    socketio.AsyncServer(client_manager=manager)
    a = await manager.connect("eio-a", "/")
    b = await manager.connect("eio-a", "/other")  # the same client on a second namespace
    manager.assign_owner(a, "/", "alice")
    manager.assign_owner(b, "/other", "alice")
    manager.basic_enter_room(a, "/", "lobby")
    manager.basic_enter_room(b, "/other", "lobby")
    assert manager.owned_rooms("alice") == 2  # ("/", lobby) and ("/other", lobby)
    assert manager.would_exceed(a, "/", "games", limit=2)
    manager.basic_close_room("lobby", "/")
    assert manager.owned_rooms("alice") == 1
    assert not manager.would_exceed(a, "/", "games", limit=2)
    manager.basic_disconnect(b, "/other")
    assert manager.owned_rooms("alice") == 0 and manager.app_room_count("/other") == 0


async def test_an_owner_given_late_counts_the_rooms_already_joined() -> None:
    manager = RecordingManager()
    socketio.AsyncServer(client_manager=manager)
    sid = await manager.connect("eio-a", "/")
    manager.basic_enter_room(sid, "/", "early")
    manager.assign_owner(sid, "/", "bob")
    assert manager.owned_rooms("bob") == 1
    manager.assign_owner("not-connected", "/", "bob")  # ignored
    assert manager.owner_of("not-connected", "/") is None


async def run_room_script(manager: Any) -> list[Any]:
    """Connect, join, leave, close, disconnect on a real python-socketio manager;
    what it holds after each step, with the random sids named A and B."""
    socketio.AsyncServer(client_manager=manager)
    a = await manager.connect("eio-a", "/")
    b = await manager.connect("eio-b", "/")
    names = {a: "A", b: "B"}

    def state() -> Any:
        rooms = {
            ns: {names.get(r, r): sorted(names[s] for s in m) for r, m in by_room.items()}
            for ns, by_room in manager.rooms.items()
        }
        held = [sorted(names.get(r, r) for r in manager.get_rooms(s, "/")) for s in (a, b)]
        return rooms, held

    for room in ("r1", "r2", "r3"):
        manager.basic_enter_room(a, "/", room)
    manager.basic_enter_room(b, "/", "r1")
    states = [state()]
    manager.basic_leave_room(a, "/", "r2")
    manager.basic_close_room("r3", "/")
    states.append(state())
    manager.basic_disconnect(a, "/")
    states.append(state())
    manager.basic_disconnect(b, "/")
    states.append(state())
    return states


async def test_indexed_manager_keeps_the_same_rooms_as_the_library() -> None:
    indexed = IndexedManager()
    assert await run_room_script(indexed) == await run_room_script(socketio.AsyncManager())
    assert indexed.sid_rooms == {}  # nothing left behind by the disconnects
    assert isinstance(indexed, RoomIndex)
