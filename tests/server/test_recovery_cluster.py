"""Connection state recovery on a Redis Cluster (`server/sio/cluster/recovery.py`,
`KeyLayout`): three real masters on loopback, real server processes, the official JS
client under Node. The shapes of `tests/server/test_recovery.py`: a client in a room
drops while another, on another node, keeps sending to the room; it comes back
recovered (same sid) with every message once, in order. Here the stream and the room
channels live on the master owning the namespace's hash tag, and that master is
also SIGKILLed and restarted while a client is away."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from typing import Any

import pytest
import redis

from iofleet.processes import free_port
from server.net.redis_topology import ShardedSubscriber, parse_redis_url
from tests.server.fanout_support import status
from tests.server.test_recovery import (
    RECOVERY_ENV,
    ROOM,
    assert_recovered,
    clients_of_a_killed_node_recover,
    open_in_room,
    say,
    send_while,
    texts,
)
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess, wait_until
from tests.support.redis_topologies import RedisClusterServers

# The key layout on a Cluster (`KeyLayout`), spelled out: a contract with a fleet
# already running it. Everything of namespace "/" hashes on the tag {iofleet#/}.
STREAM = "iofleet#stream#{iofleet#/}"
ROOM_CHANNEL = "iofleet#room#{iofleet#/}#" + ROOM
# Reconnect attempts every 0.2-0.5 s: a client parked on a dead address comes back soon
# after it is pointed at a node again.
QUICK_RECONNECT = {"reconnectionDelay": 200, "reconnectionDelayMax": 500}


@pytest.fixture
def redis_cluster() -> Iterator[RedisClusterServers]:
    cluster = RedisClusterServers(durable=True).start()
    yield cluster
    cluster.stop()


def nodes(start_server: Any, cluster: RedisClusterServers) -> list[ServerProcess]:
    settings = {**RECOVERY_ENV, "IOFLEET_REDIS_URL": cluster.url}
    return [start_server(f"node-{name}", **settings) for name in "ab"]


def stream_length(cluster: RedisClusterServers, key: str) -> int:
    client = redis.Redis(port=cluster.master_of(key))
    try:
        return int(client.xlen(key))
    finally:
        client.close()


@pytest.mark.parametrize("sender_on", ["a", "b"], ids=lambda n: f"sender-on-{n}")
async def test_cluster_a_dropped_client_recovers_every_message_once_in_order(
    redis_cluster: RedisClusterServers, start_server: Any, js: JsClients, sender_on: str
) -> None:
    """The client moves from node A to node B; the sender is on A (its node delivers
    its own emits as they come back from the cluster) or on B."""
    node = dict(zip("ab", nodes(start_server, redis_cluster), strict=True))
    node_a, node_b = node["a"], node["b"]
    sid = await open_in_room(js, "c", node_a)
    await open_in_room(js, "sender", node[sender_on])
    # The room's channel is in the namespace's slot, the nodes with members hear it
    # there through sharded pub/sub, and the stream is in that slot too (one script).
    assert redis_cluster.shard_subscribers(ROOM_CHANNEL) == len({"a", sender_on})
    assert redis_cluster.master_of(STREAM) == redis_cluster.master_of(ROOM_CHANNEL)
    mark = len(js.messages)

    async def drop() -> None:
        await js.drop("c", node_b.url)

    sent = await send_while(js, "sender", drop)
    await assert_recovered(js, "c", sid, sent, node_b, mark)
    assert stream_length(redis_cluster, STREAM) >= len(sent)


async def test_cluster_a_client_in_two_rooms_recovers_both(
    redis_cluster: RedisClusterServers, start_server: Any, js: JsClients
) -> None:
    """Two rooms whose channels would hash to different masters without the tag: one
    stream for the namespace, so one offset covers both, and the replay has them all."""
    node_a, node_b = nodes(start_server, redis_cluster)
    other = next(
        f"other-{i}"
        for i in range(100)
        if redis_cluster.master_of(f"iofleet#room#/#other-{i}")
        != redis_cluster.master_of(f"iofleet#room#/#{ROOM}")
    )
    sid = await open_in_room(js, "c", node_a, **QUICK_RECONNECT)
    await say(js, "c", other)
    await open_in_room(js, "sender", node_b)
    await say(js, "sender", other)
    mark = len(js.messages)
    await js.drop("c", f"http://127.0.0.1:{free_port()}")  # away until all is sent
    sent = [f"m{i:03d}" for i in range(30)]
    for index, text in enumerate(sent):
        room = (ROOM, other)[index % 2]
        assert (await js.call("sender", "chat:message", {"room": room, "text": text}))["ok"]
    await js.retarget("c", node_b.url)
    await assert_recovered(js, "c", sid, sent, node_b, mark)


async def test_cluster_clients_whose_node_is_killed_recover_on_another(
    redis_cluster: RedisClusterServers, start_server: Any, js: JsClients
) -> None:
    await clients_of_a_killed_node_recover(js, *nodes(start_server, redis_cluster))


async def redis_is(node: ServerProcess, state: str) -> None:
    await asyncio.to_thread(
        wait_until, lambda: status(node.admin_url)["redis"] == state, 20, f"redis {state}"
    )


async def test_cluster_recovery_across_a_restart_of_the_namespace_s_master(
    redis_cluster: RedisClusterServers, start_server: Any, js: JsClients
) -> None:
    """The client is away while the master holding the namespace's stream and room
    channels is SIGKILLed and started again (its data kept, as a shard's replica
    keeps it): what was sent before and after the restart is replayed, once, in
    order. After the restart the emit script runs on a master with an empty script
    cache, and both nodes subscribe to the room on it again."""
    node_a, node_b = nodes(start_server, redis_cluster)
    sid = await open_in_room(js, "c", node_a, **QUICK_RECONNECT)
    await open_in_room(js, "sender", node_b)
    mark = len(js.messages)
    await js.drop("c", f"http://127.0.0.1:{free_port()}")  # nobody listens there: it waits

    async def send(texts_: list[str]) -> None:
        for text in texts_:
            assert (await js.call("sender", "chat:message", {"room": ROOM, "text": text}))["ok"]

    before, after = [f"m{i:03d}" for i in range(10)], [f"m{i:03d}" for i in range(10, 20)]
    await send(before)
    down = redis_cluster.ports.index(redis_cluster.master_of(STREAM))
    redis_cluster.kill(down)
    for node in (node_a, node_b):
        await redis_is(node, "down")
    await asyncio.to_thread(redis_cluster.restart, down)
    for node in (node_a, node_b):
        await redis_is(node, "up")
    await asyncio.to_thread(
        wait_until,
        lambda: redis_cluster.shard_subscribers(ROOM_CHANNEL) == 1,
        20,
        "node B subscribed to the room on the restarted master",
    )
    await send(after)
    await js.retarget("c", node_b.url)
    await assert_recovered(js, "c", sid, before + after, node_b, mark)
    assert texts(js, "c") == before + after


async def test_a_ping_on_a_shard_link_answers_after_its_subscriptions(
    redis_cluster: RedisClusterServers,
) -> None:
    """What a recovery waits on before it replays (`_subscription_covers`): a PING on
    the link holding the namespace's channels comes back through `listen()` after the
    SSUBSCRIBE sent before it, so an emit published from then on is heard live."""
    subscriber = parse_redis_url(redis_cluster.url).subscriber("iofleet-test")
    assert isinstance(subscriber, ShardedSubscriber)
    publisher = redis.RedisCluster(host="127.0.0.1", port=redis_cluster.ports[0])
    try:
        await subscriber.subscribe(ROOM_CHANNEL)
        await subscriber.ping(b"token-1", ROOM_CHANNEL)
        messages = subscriber.listen()
        pong = await asyncio.wait_for(anext(messages), 5)
        assert (pong["type"], pong["data"]) == ("pong", b"token-1")
        assert publisher.spublish(ROOM_CHANNEL, "after the pong") == 1
        heard = await asyncio.wait_for(anext(messages), 5)
        assert (heard["type"], heard["data"]) == ("smessage", b"after the pong")
    finally:
        publisher.close()
        await subscriber.aclose()
