"""Regions whose Redis is a Redis Cluster (`redis_mode: cluster`): the relay hears its
region with SSUBSCRIBE to exactly the rooms a far region wants, reads interest with
PUBSUB SHARDCHANNELS less its own subscriptions, and writes into a far Cluster with
SPUBLISH and the sharded emit script (`relay/sharded.py`, `relay/layout.py`).

Region r1 runs a real 3-master Redis Cluster (`tests/support/redis_topologies.py`),
r2 one redis-server (or a second Cluster); stock clients on both sides; recovery on
(so r1's names are hash-tagged per namespace: the two regions' channel names differ
and the relay translates them). r1's relay reaches r2 through the delay proxy (70 ms
one way, its bytes counted); r2's relay reaches r1's Cluster through a counting proxy
per master without delay: a Cluster announces its masters' addresses to every
client, the region's own servers too, so a delay there would slow r1's own traffic.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from iofleet.processes import free_port
from iofleet.regions import DelayProxyProcess, RelayProcess
from tests.regions.conftest import RELAY_ENV, Region, World, get_json
from tests.regions.test_link_failures import texts
from tests.server.conftest import PyClient
from tests.server.fanout_support import sid_acks_and_namespace_emits_cross
from tests.support.jsclient import JsClients
from tests.support.procs import RedisServer, make_token, wait_until
from tests.support.redis_topologies import RedisClusterServers

# `KeyLayout` on a Cluster with recovery: everything of namespace "/" on one tag.
TAG = "{iofleet#/}"
STREAM = f"iofleet#stream#{TAG}"


def cluster_room(room: str) -> str:
    return f"iofleet#room#{TAG}#{room}"


# A clustered region's masters sit behind counting proxies (no delay): a Cluster tells
# every client where its masters are (their announced ports), so the region's own
# servers use them too; they count every byte written into the region's Redis.
CLUSTER_PATH = "any"


def stores_of(kinds: dict[str, str]) -> dict[str, RedisServer | RedisClusterServers]:
    return {
        name: (
            RedisClusterServers(durable=True, announce_ports=[free_port() for _ in range(3)])
            if kind == "cluster"
            else RedisServer()
        )
        for name, kind in kinds.items()
    }


def build(
    stores: dict[str, RedisServer | RedisClusterServers], log_dir: Path, relay_env: dict[str, str]
) -> World:
    """Regions on `stores` (started: a Cluster's URL names its nodes' ports), relays, a
    delay proxy on each link into a single Redis and a counting proxy in front of each
    Cluster master; relays and proxies not started."""
    regions = {name: Region(name, store) for name, store in stores.items()}  # type: ignore[arg-type]
    links = [
        DelayProxyProcess(source, target, store.port)
        for source in stores
        for target, store in stores.items()
        if target != source and isinstance(store, RedisServer)
    ]
    for name, store in stores.items():
        if isinstance(store, RedisClusterServers):
            assert store.announce_ports is not None
            links += [
                DelayProxyProcess(CLUSTER_PATH, name, real, delay_ms=0, port=announced)
                for real, announced in zip(store.ports, store.announce_ports, strict=True)
            ]
    for name, region in regions.items():
        far = {}
        for target, store in stores.items():
            if target == name:
                continue
            proxy = next((x for x in links if (x.source, x.target_region) == (name, target)), None)
            far[target] = f"redis://127.0.0.1:{proxy.port}/0" if proxy else store.url
        region.relay = RelayProcess(name, stores[name].url, far, relay_env)
    return World(regions, links, log_dir)


def seen_in_cluster(world: World, region: str, text: str) -> bool:
    """Whether `text` was written into (or read from) `region`'s Cluster at all."""
    paths = [x for x in world.links if (x.source, x.target_region) == (CLUSTER_PATH, region)]
    assert paths
    return any(get_json(f"{x.control_url}/seen?text={text}")["seen"] for x in paths)


@pytest.fixture
def kinds() -> dict[str, str]:
    return {"r1": "cluster", "r2": "single"}


@pytest.fixture
def recovery() -> bool:
    return True


@pytest.fixture
def cworld(kinds: dict[str, str], recovery: bool) -> Iterator[World]:
    """r1 on a Redis Cluster, r2 on one Redis (or as `kinds` says), one node each;
    recovery on (hash-tagged names on a Cluster) unless `recovery` says otherwise."""
    stores = stores_of(kinds)
    node_env = {} if recovery else {"IOFLEET_RECOVERY": "false"}
    relay_env = {**RELAY_ENV, "IOFLEET_RELAY_RECOVERY": str(recovery).lower()}
    world: World | None = None
    try:
        for store in stores.values():
            store.start()
        log_dir = Path(tempfile.mkdtemp(prefix="iofleet-cluster-regions-"))
        world = build(stores, log_dir, relay_env)
        for link in world.links:
            link.start(world.log_dir)
        for region in world.regions.values():
            assert region.relay is not None
            region.relay.start(world.log_dir, os.environ)
            region.start_node(**node_env)
        world.wait_links()
        yield world
    finally:
        if world is not None:
            for region in world.regions.values():
                for node in region.nodes:
                    node.stop()
                if region.relay is not None:
                    region.relay.stop()
            for link in world.links:
                link.stop()
        for store in stores.values():
            store.stop()


def cluster_of(world: World, name: str = "r1") -> RedisClusterServers:
    store = world.regions[name].redis
    assert isinstance(store, RedisClusterServers)
    return store


def stream_texts(cluster: RedisClusterServers) -> list[str]:
    """The texts in r1's recovery stream of namespace "/", in stream order."""
    client = redis.Redis(port=cluster.master_of(STREAM))
    try:
        return [entry[b"m"].decode() for _, entry in client.xrange(STREAM)]
    finally:
        client.close()


async def joined(world: World, py_clients: Any, room: str) -> tuple[PyClient, PyClient]:
    alice = await py_clients(world.regions["r1"].nodes[0].url, user="alice")
    bob = await py_clients(world.regions["r2"].nodes[0].url, user="bob")
    for client in (alice, bob):
        assert (await client.sio.call("room:join", {"room": room}))["ok"]
    return alice, bob


async def test_a_room_spans_a_cluster_region_and_a_single_redis_one(
    cworld: World, py_clients: Any, js: JsClients
) -> None:
    r1, r2 = cworld.regions["r1"], cworld.regions["r2"]
    on_r1 = await py_clients(r1.nodes[0].url, user="alice")
    assert (await on_r1.sio.call("room:join", {"room": "support-42"}))["ok"]
    await js.open(
        "bob", r2.nodes[0].url, auth={"token": make_token("bob")}, transports=["websocket"]
    )
    await js.wait_client("bob", "connect")
    assert (await js.call("bob", "room:join", {"room": "support-42"}))["ok"]
    cworld.wait_interest("r1", "r2", 1)
    # r1 announces the room and its namespace channel; r2 has no namespace channel
    # (its namespace emits travel on the shared channel), so one room remains.
    cworld.wait_interest("r2", "r1", 1)
    # r1's relay holds the room on r1's Cluster (it is wanted in r2), beside alice's node.
    wait_until(
        lambda: cluster_of(cworld).shard_subscribers(cluster_room("support-42")) == 2,
        timeout=10,
        what="r1's relay subscribes the room r2 wants",
    )

    count = 50
    for i in range(count):
        reply = await on_r1.sio.call("chat:message", {"room": "support-42", "text": f"E{i}"})
        assert reply["ok"]
    for i in range(count):
        reply = await js.call("bob", "chat:message", {"room": "support-42", "text": f"W{i}"})
        assert reply["ok"]

    def texts_of_bob() -> list[str]:
        return [m["args"][0]["text"] for m in js.seen("bob", "event", "chat:message")]

    await on_r1.wait(lambda: len(on_r1.received("chat:message")) >= 2 * count, timeout=20)
    await js.wait_for(lambda m: len(texts_of_bob()) >= 2 * count, timeout=20)
    await asyncio.sleep(0.3)  # a duplicate would arrive by now
    for got in ([m["text"] for m in on_r1.received("chat:message")], texts_of_bob()):
        assert len(got) == 2 * count
        for sender in "EW":
            assert [t for t in got if t[0] == sender] == [f"{sender}{i}" for i in range(count)]
    # r2's messages went through r1's recovery script (its namespace's stream), so
    # each delivery in r1 carries an r1 offset.
    assert len(on_r1.offsets) == 2 * count


async def test_a_cluster_region_hears_only_the_rooms_a_far_region_wants(
    cworld: World, py_clients: Any
) -> None:
    """Interest-only both ways, in bytes: r1 (Cluster) sends r2 none of a room r2
    has no member in (not a byte of it on the link), and its relay does not even
    subscribe it; r2 writes into r1's Cluster only the rooms r1 has members in."""
    alice = await py_clients(cworld.regions["r1"].nodes[0].url, user="alice")
    bob = await py_clients(cworld.regions["r2"].nodes[0].url, user="bob")
    for room in ("busy", "quiet"):
        assert (await alice.sio.call("room:join", {"room": room}))["ok"]
    for room in ("quiet", "west-only"):
        assert (await bob.sio.call("room:join", {"room": room}))["ok"]
    cworld.wait_interest("r1", "r2", 2)
    cluster = cluster_of(cworld)
    wait_until(
        lambda: cluster.shard_subscribers(cluster_room("quiet")) == 2,
        timeout=10,
        what="r1's relay subscribes quiet",
    )
    # Only alice's node holds busy: the relay's SSUBSCRIBE follows r2's interest.
    assert cluster.shard_subscribers(cluster_room("busy")) == 1
    # The relay's own subscriptions are no interest of r1: r2 sees r1's two rooms
    # (busy, quiet), not west-only (which r1's relay holds for no member of r1).
    cworld.wait_interest("r2", "r1", 2)

    for i in range(30):
        reply = await alice.sio.call("chat:message", {"room": "busy", "text": f"BUSY-MARK-{i}"})
        assert reply["ok"]
    for i in range(10):
        reply = await bob.sio.call("chat:message", {"room": "west-only", "text": f"WEST-MARK-{i}"})
        assert reply["ok"]
    assert (await alice.sio.call("chat:message", {"room": "quiet", "text": "QUIET-MARK"}))["ok"]
    assert (await bob.sio.call("chat:message", {"room": "quiet", "text": "QUIET-BACK"}))["ok"]
    await bob.wait(lambda: texts(bob, "QUIET-MARK"))
    await alice.wait(lambda: texts(alice, "QUIET-BACK"))
    await bob.wait(lambda: len(texts(bob, "WEST-MARK")) == 10)
    await asyncio.sleep(0.5)
    for client in (alice, bob):  # once each (the two senders' order differs by side)
        assert sorted(texts(client, "QUIET")) == ["QUIET-BACK", "QUIET-MARK"]
    assert cworld.seen_on_link("r1", "r2", "QUIET-MARK")
    assert not cworld.seen_on_link("r1", "r2", "BUSY-MARK"), (
        "r2 was sent a room it has no member in"
    )
    assert not cworld.seen_on_link("r1", "r2", "QUIET-BACK"), "r2's own message came back (echo)"
    # Not a byte of west-only entered r1's Cluster; quiet did, once (no echo back).
    assert seen_in_cluster(cworld, "r1", "QUIET-BACK")
    assert not seen_in_cluster(cworld, "r1", "WEST-MARK"), "r1 was sent a room it has no member in"
    written = stream_texts(cluster)
    assert any("QUIET-BACK" in entry for entry in written)
    assert not any("WEST-MARK" in entry for entry in written), (
        "r1 was sent a room it has no member in"
    )
    assert sum("QUIET-MARK" in entry for entry in written) == 1  # not echoed back into r1


@pytest.mark.parametrize("asker", ["r1", "r2"], ids=lambda r: f"asker-on-{r}")
async def test_sid_emits_acks_and_namespace_emits_cross_to_and_from_a_cluster(
    cworld: World, py_clients: Any, js: JsClients, asker: str
) -> None:
    """From the Cluster a sid emit and a namespace emit travel on the namespace channel
    (hash-tagged), into it they are written there; the ack on the shared channel."""
    other = "r2" if asker == "r1" else "r1"
    node_a, node_b = cworld.regions[asker].nodes[0], cworld.regions[other].nodes[0]
    await sid_acks_and_namespace_emits_cross(js, py_clients, node_a, node_b)


async def test_user_rooms_and_fleet_queries_span_a_cluster_region(
    cworld: World, py_clients: Any
) -> None:
    alice, bob = await joined(cworld, py_clients, "r")
    found = await alice.sio.call("who", {"room": "r"}, timeout=10)
    assert sorted((node, user) for _, node, user, _ in found) == [
        ("r1-a", "alice"),
        ("r2-a", "bob"),
    ]
    everyone = await bob.sio.call("who", {}, timeout=10)
    assert sorted(user for _, _, user, _ in everyone) == ["alice", "bob"]


async def test_a_far_cluster_master_restarted_is_joined_again(
    cworld: World, py_clients: Any
) -> None:
    """r1's master owning the room's slot is SIGKILLed and restarted (its data kept, as
    a shard whose replica takes over keeps it): what r2 sent meanwhile is held and
    crosses once r1's servers listen again, in order, once."""
    alice, bob = await joined(cworld, py_clients, "support-42")
    cworld.wait_interest("r2", "r1", 1)
    cluster = cluster_of(cworld)
    index = cluster.ports.index(cluster.master_of(cluster_room("support-42")))
    cluster.kill(index)
    sent = [f"B-down-{i}" for i in range(5)]
    for text in sent:
        assert (await bob.sio.call("chat:message", {"room": "support-42", "text": text}))["ok"]
    await bob.wait(lambda: texts(bob, "B-down") == sent)  # r2's users go on
    cluster.restart(index)
    await alice.wait(lambda: texts(alice, "B-down") == sent, timeout=30)
    assert (await bob.sio.call("chat:message", {"room": "support-42", "text": "B-after"}))["ok"]
    await alice.wait(lambda: texts(alice, "B-after"), timeout=15)
    await asyncio.sleep(0.3)
    assert texts(alice, "B-") == [*sent, "B-after"]


@pytest.mark.parametrize("kinds", [{"r1": "cluster", "r2": "cluster"}], ids=["cluster-cluster"])
async def test_a_room_spans_two_cluster_regions(cworld: World, py_clients: Any) -> None:
    alice, bob = await joined(cworld, py_clients, "support-42")
    # Each side: the room and the namespace channel; the far relay's own
    # subscriptions of them do not count (else the interest would never drop).
    cworld.wait_interest("r1", "r2", 2)
    cworld.wait_interest("r2", "r1", 2)
    for i in range(20):
        assert (await alice.sio.call("chat:message", {"room": "support-42", "text": f"A{i}"}))["ok"]
        assert (await bob.sio.call("chat:message", {"room": "support-42", "text": f"B{i}"}))["ok"]
    for client in (alice, bob):
        await client.wait(lambda c=client: len(texts(c, "")) >= 40, timeout=20)
    await asyncio.sleep(0.3)
    for client in (alice, bob):
        for sender in "AB":
            assert texts(client, sender) == [f"{sender}{i}" for i in range(20)]
    # bob leaves: r1 stops holding the room for r2 (only alice's node is left).
    assert (await bob.sio.call("room:leave", {"room": "support-42"}))["ok"]
    cworld.wait_interest("r1", "r2", 1)  # the namespace channel only (bob is still in "/")
    wait_until(
        lambda: cluster_of(cworld, "r1").shard_subscribers(cluster_room("support-42")) == 1,
        timeout=10,
        what="r1's relay drops the room r2 left",
    )


async def test_its_own_cluster_master_restarted_the_relay_hears_its_region_again(
    cworld: World, py_clients: Any
) -> None:
    """r1's master owning the room's slot (and maybe the lease) is SIGKILLed and
    restarted: r1's relay subscribes anew on a fresh slot map and forwards again."""
    alice, bob = await joined(cworld, py_clients, "support-42")
    cworld.wait_interest("r1", "r2", 1)
    cluster = cluster_of(cworld)
    index = cluster.ports.index(cluster.master_of(cluster_room("support-42")))
    cluster.kill(index)
    cluster.restart(index)
    wait_until(
        lambda: cluster.shard_subscribers(cluster_room("support-42")) == 2,
        timeout=20,
        what="alice's node and r1's relay subscribed again",
    )
    cworld.wait_interest("r2", "r1", 1)
    assert (await alice.sio.call("chat:message", {"room": "support-42", "text": "A-after"}))["ok"]
    await bob.wait(lambda: texts(bob, "A-after"), timeout=15)
    await asyncio.sleep(0.3)
    assert texts(bob, "A-") == ["A-after"]


@pytest.mark.parametrize("recovery", [False], ids=["recovery-off"])
async def test_without_recovery_a_cluster_region_uses_plain_names_and_still_spans(
    cworld: World, py_clients: Any, js: JsClients
) -> None:
    """Recovery off: the Cluster's servers use untagged room channels and the shared
    channel for namespace emits (the same names as one Redis): rooms, sid emits,
    acks and namespace emits cross both ways."""
    alice, bob = await joined(cworld, py_clients, "support-42")
    cworld.wait_interest("r1", "r2", 1)
    cworld.wait_interest("r2", "r1", 1)
    plain = "iofleet#room#/#support-42"
    wait_until(
        lambda: cluster_of(cworld).shard_subscribers(plain) == 2,
        timeout=10,
        what="r1's relay subscribes the untagged room channel",
    )
    assert (await alice.sio.call("chat:message", {"room": "support-42", "text": "A1"}))["ok"]
    assert (await bob.sio.call("chat:message", {"room": "support-42", "text": "B1"}))["ok"]
    await bob.wait(lambda: texts(bob, "A1"), timeout=10)
    await alice.wait(lambda: texts(alice, "B1"), timeout=10)
    r1, r2 = cworld.regions["r1"].nodes[0], cworld.regions["r2"].nodes[0]
    await sid_acks_and_namespace_emits_cross(js, py_clients, r2, r1)
