"""Rooms, sids, user rooms, acks, namespace emits and fleet queries across two
regions (tests/regions/conftest.py): every message once, in the sender's order,
with stock clients; only rooms the far region has members of cross the link."""

from __future__ import annotations

from typing import Any

from tests.regions.conftest import World
from tests.server.fanout_support import sid_acks_and_namespace_emits_cross
from tests.support.jsclient import JsClients
from tests.support.procs import make_token


async def test_a_room_spans_regions_each_message_once_in_order(
    world: World, py_clients: Any, js: JsClients
) -> None:
    east, west = world.regions["r1"].nodes[0], world.regions["r2"].nodes[0]
    on_east = await py_clients(east.url, user="alice")
    assert (await on_east.sio.call("room:join", {"room": "support-42"}))["ok"]
    await js.open("bob", west.url, auth={"token": make_token("bob")}, transports=["websocket"])
    await js.wait_client("bob", "connect")
    assert (await js.call("bob", "room:join", {"room": "support-42"}))["ok"]
    world.wait_interest("r1", "r2", 1)
    world.wait_interest("r2", "r1", 1)

    count = 50
    for i in range(count):
        assert (await on_east.sio.call("chat:message", {"room": "support-42", "text": f"E{i}"}))[
            "ok"
        ]
    for i in range(count):
        assert (await js.call("bob", "chat:message", {"room": "support-42", "text": f"W{i}"}))["ok"]

    def texts_of_bob() -> list[str]:
        return [m["args"][0]["text"] for m in js.seen("bob", "event", "chat:message")]

    await on_east.wait(lambda: len(on_east.received("chat:message")) >= 2 * count, timeout=15)
    await js.wait_for(lambda m: len(texts_of_bob()) >= 2 * count, timeout=15)
    # Each client gets every message once, and each sender's messages in its order
    # (the two senders' streams interleave differently on each side of the link).
    for got in ([m["text"] for m in on_east.received("chat:message")], texts_of_bob()):
        assert len(got) == 2 * count
        for sender in "EW":
            assert [t for t in got if t[0] == sender] == [f"{sender}{i}" for i in range(count)]
    # Recovery is on in both regions: every delivery carries its own region's offset.
    assert len(on_east.offsets) == 2 * count


async def test_a_region_without_members_gets_no_bytes_of_a_room(
    world: World, py_clients: Any
) -> None:
    east, west = world.regions["r1"].nodes[0], world.regions["r2"].nodes[0]
    on_east = await py_clients(east.url, user="alice")
    on_west = await py_clients(west.url, user="bob")
    for room in ("busy", "quiet"):
        assert (await on_east.sio.call("room:join", {"room": room}))["ok"]
    assert (await on_west.sio.call("room:join", {"room": "quiet"}))["ok"]
    world.wait_interest("r1", "r2", 1)

    for i in range(30):
        assert (await on_east.sio.call("chat:message", {"room": "busy", "text": f"BUSY-MARK-{i}"}))[
            "ok"
        ]
    assert (await on_east.sio.call("chat:message", {"room": "quiet", "text": "QUIET-MARK"}))["ok"]
    await on_west.wait(lambda: on_west.received("chat:message"))
    assert [m["text"] for m in on_west.received("chat:message")] == ["QUIET-MARK"]
    assert world.seen_on_link("r1", "r2", "QUIET-MARK")
    assert not world.seen_on_link("r1", "r2", "BUSY-MARK"), "r2 was sent a room it has no member in"
    # No echo: what r1 sent r2 never comes back over the link r2 -> r1.
    assert not world.seen_on_link("r2", "r1", "QUIET-MARK")

    # The last member in r2 leaves: r1 stops sending the room over.
    assert (await on_west.sio.call("room:leave", {"room": "quiet"}))["ok"]
    world.wait_interest("r1", "r2", 0)
    assert (await on_east.sio.call("chat:message", {"room": "quiet", "text": "AFTER-MARK"}))["ok"]
    await on_east.wait(lambda: len(on_east.received("chat:message")) == 32)
    assert not world.seen_on_link("r1", "r2", "AFTER-MARK")


async def test_sid_emits_acks_and_namespace_emits_cross_regions(
    world: World, py_clients: Any, js: JsClients
) -> None:
    east, west = world.regions["r1"].nodes[0], world.regions["r2"].nodes[0]
    await sid_acks_and_namespace_emits_cross(js, py_clients, east, west)


async def test_user_rooms_and_fleet_queries_span_regions(world: World, py_clients: Any) -> None:
    east, west = world.regions["r1"].nodes[0], world.regions["r2"].nodes[0]
    on_east = await py_clients(east.url, user="alice")
    on_west = await py_clients(west.url, user="bob")
    assert (await on_west.sio.call("room:join", {"room": "r"}))["ok"]
    assert (await on_east.sio.call("room:join", {"room": "r"}))["ok"]
    found = await on_east.sio.call("who", {"room": "r"}, timeout=10)
    assert sorted((node, user) for _, node, user, _ in found) == [
        ("r1-a", "alice"),
        ("r2-a", "bob"),
    ]
    everyone = await on_west.sio.call("who", {}, timeout=10)
    assert sorted(user for _, _, user, _ in everyone) == ["alice", "bob"]
