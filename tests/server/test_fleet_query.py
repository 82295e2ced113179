"""`server.sio.cluster.fleet_query.fetch_sockets`: the sockets of a room on every node (Socket.IO's
`fetchSockets`), asked over Redis; this node's alone when Redis is away or unused."""

from __future__ import annotations

import asyncio

from tests.server.fanout_support import status
from tests.server.test_routing import FAST, ROUTING_APP
from tests.support.jsclient import JsClients
from tests.support.procs import RedisServer, ServerProcess, make_token, wait_until


def _nodes(start_server, redis_server: RedisServer, *names: str) -> list[ServerProcess]:
    """Nodes running the routing app (its `who` asks `fetch_sockets`) on one Redis."""
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_HANDLERS": ROUTING_APP, **FAST}
    return [start_server(name, **env) for name in names]


async def test_fetch_sockets_answers_every_node_with_user_and_rooms(
    start_server, redis_server: RedisServer, js: JsClients, py_clients
) -> None:
    node_a, node_b = _nodes(start_server, redis_server, "node-a", "node-b")
    _nodes(start_server, redis_server, "node-c")  # no socket here: its empty reply counts too
    asker = await py_clients(node_a.url, user="asker")
    for name in ("in-room", "elsewhere"):
        await js.open(name, node_b.url, auth={"token": make_token(name)}, transports=["websocket"])
    in_room = (await js.wait_client("in-room", "connect"))["sid"]
    elsewhere = (await js.wait_client("elsewhere", "connect"))["sid"]
    assert (await js.call("in-room", "room:join", {"room": "r"}))["ok"]
    assert (await asker.sio.call("room:join", {"room": "r"}))["ok"]
    me = asker.sio.get_sid()

    in_r = await asker.sio.call("who", {"room": "r"})
    assert in_r == sorted(
        [
            [me, "node-a", "asker", sorted([me, "r"])],
            [in_room, "node-b", "in-room", sorted([in_room, "r"])],
        ]
    )
    everyone = await asker.sio.call("who", {})
    assert sorted(sid for sid, *_ in everyone) == sorted([me, in_room, elsewhere])


async def test_fetch_sockets_without_redis_answers_this_node_and_says_so(
    start_server, redis_server: RedisServer, js: JsClients, py_clients
) -> None:
    node_a, node_b = _nodes(start_server, redis_server, "node-a", "node-b")
    asker = await py_clients(node_a.url, user="asker")
    await js.open("far", node_b.url, auth={"token": make_token("far")}, transports=["websocket"])
    await js.wait_client("far", "connect")
    assert len(await asker.sio.call("who", {})) == 2

    redis_server.stop()
    await asyncio.to_thread(wait_until, lambda: status(node_a.admin_url)["redis"] == "down", 10)
    assert [sid for sid, *_ in await asker.sio.call("who", {})] == [asker.sio.get_sid()]
    (line,) = [e for e in node_a.log_entries() if e.get("event") == "fanout.query_incomplete"]
    assert line["reason"] == "redis unavailable" and line["level"] == "warning"


async def test_fetch_sockets_on_one_node_without_redis(start_server, py_clients) -> None:
    node = start_server("solo", IOFLEET_HANDLERS=ROUTING_APP, **FAST)
    one = await py_clients(node.url, user="one")
    two = await py_clients(node.url, user="two")
    assert (await one.sio.call("room:join", {"room": "r"}))["ok"]
    answer = await two.sio.call("who", {"room": "r"})
    assert answer == [[one.sio.get_sid(), "solo", "one", sorted([one.sio.get_sid(), "r"])]]
