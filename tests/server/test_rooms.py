"""The room ledger: rooms per connection and per owner, kept as they change."""

from __future__ import annotations

from server.rooms import RoomLedger


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
