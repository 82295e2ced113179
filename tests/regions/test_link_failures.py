"""Regions stay independent (tests/regions/conftest.py): with the link cut, each
region's own users go on at local speed while the relay holds what should cross,
in order, and delivers it once the link is back; a far Redis restarted, a relay
or a node killed with SIGKILL, and the rooms span the regions again."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

from iofleet.regions import RelayProcess
from tests.regions.conftest import RELAY_ENV, World, get_json
from tests.server.conftest import PyClient
from tests.support.metrics import metric
from tests.support.procs import wait_until

ROOM = "support-42"


async def in_room(world: World, py_clients: Any, rooms: int = 1) -> tuple[PyClient, PyClient]:
    """alice on r1, bob on r2, both in ROOM, each relay aware of the other region's
    (`rooms` channels of it: 2 between two Clusters, which announce the namespace's too)."""
    alice = await py_clients(world.regions["r1"].nodes[0].url, user="alice")
    bob = await py_clients(world.regions["r2"].nodes[0].url, user="bob")
    for client in (alice, bob):
        assert (await client.sio.call("room:join", {"room": ROOM}))["ok"]
    world.wait_interest("r1", "r2", rooms)
    world.wait_interest("r2", "r1", rooms)
    return alice, bob


def texts(client: PyClient, prefix: str) -> list[str]:
    return [m["text"] for m in client.received("chat:message") if m["text"].startswith(prefix)]


async def say(client: PyClient, texts_: list[str]) -> list[float]:
    """Send each text; returns how long each took until the sender heard it back."""
    took = []
    for text in texts_:
        start = time.monotonic()
        assert (await client.sio.call("chat:message", {"room": ROOM, "text": text}))["ok"]
        await client.wait(lambda t=text: t in texts(client, t))
        took.append(time.monotonic() - start)
    return took


async def test_a_cut_link_holds_messages_in_order_and_delivers_them_when_back(
    world: World, py_clients: Any
) -> None:
    alice, bob = await in_room(world, py_clients)
    world.cut("r1", "r2")
    world.wait_links("down")

    sent_a = [f"A{i:02d}" for i in range(20)]
    sent_b = [f"B{i:02d}" for i in range(20)]
    took = await say(alice, sent_a) + await say(bob, sent_b)
    # Each region goes on at local speed: no wait on the far region.
    assert max(took) < 0.5, took
    assert texts(alice, "A") == sent_a and texts(bob, "B") == sent_b
    assert texts(bob, "A") == [] and texts(alice, "B") == []
    # A fleet query does not wait on the cut link: r1's sockets, at once.
    start = time.monotonic()
    found = await alice.sio.call("who", {"room": ROOM}, timeout=10)
    assert time.monotonic() - start < 1.0
    assert [user for _, _, user, _ in found] == ["alice"]
    r1 = world.regions["r1"]
    held = r1.link_status("r2")
    assert held["state"] == "down" and held["held"] == 20 and held["lag_s"] > 0
    assert metric(r1.relay.admin_url, "iofleet_relay_link_up", {"link": "r2"}) == 0  # type: ignore[union-attr]

    world.restore("r1", "r2")
    await bob.wait(lambda: len(texts(bob, "A")) >= 20, timeout=15)
    await alice.wait(lambda: len(texts(alice, "B")) >= 20, timeout=15)
    await asyncio.sleep(0.3)  # nothing more comes (no duplicates)
    assert texts(bob, "A") == sent_a and texts(alice, "B") == sent_b
    world.wait_links("up")
    assert r1.link_status("r2")["held"] == 0


async def test_beyond_its_bound_the_outbox_drops_the_oldest_and_counts_them(
    world: World, py_clients: Any
) -> None:
    """A relay whose outbox holds 5: of 12 messages sent while the link is cut, the
    last 5 cross, in order, and 7 are counted dropped."""
    r1 = world.regions["r1"]
    assert r1.relay is not None
    r1.relay.stop()
    r1.relay.env = {**RELAY_ENV, "IOFLEET_RELAY_OUTBOX_MESSAGES": "5"}
    r1.relay.start(world.log_dir, os.environ)
    world.wait_links("up")
    alice, bob = await in_room(world, py_clients)
    world.cut("r1", "r2")
    wait_until(lambda: r1.link_status("r2")["state"] == "down", what="r1 -> r2 down")
    sent = [f"A{i:02d}" for i in range(12)]
    await say(alice, sent)
    world.restore("r1", "r2")
    await bob.wait(lambda: len(texts(bob, "A")) >= 5, timeout=15)
    await asyncio.sleep(0.3)
    assert texts(bob, "A") == sent[-5:]
    dropped = metric(
        r1.relay.admin_url,
        "iofleet_relay_dropped_messages_total",
        {"link": "r2", "reason": "overflow"},
    )
    assert dropped == 7


async def test_a_far_redis_restarted_is_joined_again(world: World, py_clients: Any) -> None:
    alice, bob = await in_room(world, py_clients)
    assert texts(bob, "A") == []
    r2 = world.regions["r2"]
    r2.redis.stop()
    await say(alice, ["A-while-down"])  # r1's users go on
    r2.redis.start()
    # bob's node resubscribes, r2's relay announces its interest again, and the held
    # message crosses once the far servers listen.
    await bob.wait(lambda: texts(bob, "A-while-down"), timeout=20)
    await say(alice, ["A-after"])
    await bob.wait(lambda: texts(bob, "A-after"), timeout=10)
    assert texts(bob, "A") == ["A-while-down", "A-after"]


async def test_a_relay_killed_and_started_again_joins_the_rooms_again(
    world: World, py_clients: Any
) -> None:
    alice, bob = await in_room(world, py_clients)
    r1 = world.regions["r1"]
    assert r1.relay is not None and r1.relay.process is not None
    r1.relay.process.send_signal(signal.SIGKILL)
    r1.relay.process.wait(10)
    took = await say(alice, ["A-no-relay"]) + await say(bob, ["B-no-relay"])
    assert max(took) < 0.5, took  # each region goes on by itself
    r1.relay.start(world.log_dir, os.environ)
    world.wait_links("up")
    world.wait_active("r1")  # once the dead relay's lease ran out
    world.wait_interest("r1", "r2", 1)
    world.wait_interest("r2", "r1", 1)
    await say(alice, ["A-again"])
    await bob.wait(lambda: texts(bob, "A-again"), timeout=10)
    await say(bob, ["B-again"])
    await alice.wait(lambda: texts(alice, "B-again"), timeout=10)


async def test_a_node_killed_leaves_the_region_s_other_members_joined(
    world: World, py_clients: Any
) -> None:
    r2 = world.regions["r2"]
    second = r2.start_node("b")
    alice, _ = await in_room(world, py_clients)
    carol = await py_clients(second.url, user="carol")
    assert (await carol.sio.call("room:join", {"room": ROOM}))["ok"]
    node = r2.nodes[0]
    assert node.process is not None
    node.signal(signal.SIGKILL)
    node.wait_exit(10)
    await asyncio.sleep(0.3)
    await say(alice, ["A-after-kill"])
    await carol.wait(lambda: texts(carol, "A-after-kill"), timeout=10)
    status = get_json(f"{world.regions['r1'].relay.admin_url}/admin/status")  # type: ignore[union-attr]
    assert [link["state"] for link in status["links"]] == ["up"]


async def test_a_standby_relay_takes_over_when_the_active_one_is_killed(
    world: World, py_clients: Any
) -> None:
    """Two relay replicas in r1: one forwards (each message crosses once), and when
    it is killed with SIGKILL the other takes the lease and forwards."""
    r1 = world.regions["r1"]
    active = r1.relay
    assert active is not None
    standby = RelayProcess("r1", active.redis_url, active.far, active.env)
    standby.start(world.log_dir, os.environ)
    try:
        alice, bob = await in_room(world, py_clients)
        leaders = [
            get_json(f"{relay.admin_url}/admin/status")["leader"] for relay in (active, standby)
        ]
        assert leaders == [True, False]
        await say(alice, ["A-one"])
        await bob.wait(lambda: texts(bob, "A-one"))
        await asyncio.sleep(0.3)
        assert texts(bob, "A") == ["A-one"]  # once, not once per replica

        assert active.process is not None
        active.process.send_signal(signal.SIGKILL)
        active.process.wait(10)
        world.wait_active("r1", standby)
        world.wait_interest("r2", "r1", 1)
        await say(alice, ["A-two"])
        await bob.wait(lambda: texts(bob, "A-two"), timeout=10)
        await say(bob, ["B-two"])
        await alice.wait(lambda: texts(alice, "B-two"), timeout=10)
        assert texts(bob, "A") == ["A-one", "A-two"]
    finally:
        standby.stop()
