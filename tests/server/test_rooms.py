"""The room ledger: rooms per connection and per owner, kept as they change."""

from __future__ import annotations

from typing import Any

import socketio

from server.sio.rooms import IndexedManager, RoomLedger


def test_join_leave_and_remove_keep_owner_counts() -> None:
    ledger = RoomLedger()
    ledger.add("a1", "/", owner="alice")
    ledger.add("a2", "/", owner="alice")  # a second tab
    ledger.join("a1", "lobby")
    ledger.join("a2", "lobby")
    ledger.join("a2", "games")
    assert ledger.owned_count("alice") == 2
    assert ledger.would_exceed("a1", "news", limit=2)
    assert not ledger.would_exceed("a1", "games", limit=2)  # already the owner's
    ledger.remove("a2")
    assert ledger.owned_count("alice") == 1  # lobby is still held by a1
    assert ledger.rooms_of("a1") == {"lobby"}
    ledger.leave("a1", "lobby")
    assert ledger.owned_count("alice") == 0
    ledger.remove("a1")
    assert len(ledger) == 0 and "a1" not in ledger


def test_owners_are_separate_and_namespaces_are_separate_rooms() -> None:
    ledger = RoomLedger()
    ledger.add("x", "/", owner="conn-x")
    ledger.add("y", "/", owner="conn-y")
    ledger.add("x2", "/custom", owner="conn-x")
    ledger.join("x", "r")
    ledger.join("x2", "r")
    ledger.join("y", "r")
    assert ledger.owned_count("conn-x") == 2  # ("/", r) and ("/custom", r)
    assert ledger.owned_count("conn-y") == 1


def test_prune_drops_rooms_closed_behind_its_back() -> None:
    ledger = RoomLedger()
    ledger.add("s", "/", owner="u")
    ledger.join("s", "gone")
    ledger.join("s", "kept")
    ledger.prune("s", lambda sid, namespace, room: room == "kept")
    assert ledger.rooms_of("s") == {"kept"}
    assert ledger.owned_count("u") == 1


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
