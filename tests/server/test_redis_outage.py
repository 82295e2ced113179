"""Redis stopped and restarted under connected clients: no crash, the nodes stay
ready (the fan-out is degraded: counted, shown, logged), fan-out resumes by itself,
and what was published meanwhile reaches the other nodes from the outbox, in order."""

from __future__ import annotations

import asyncio

from tests.server.fanout_support import join_room, status
from tests.support.jsclient import JsClients
from tests.support.metrics import metric, metric_or_zero
from tests.support.procs import RedisServer, http_status, make_token, wait_until

# Redis back on its port -> every outage message on the other node: the listener
# retries every 0.5 s, the outbox waits 0.7 s more; slack for a busy host.
OUTBOX_DELIVERED_WITHIN_SECONDS = 6.0


async def test_redis_outage_and_recovery(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    await join_room(js, {"a1": node_a, "a2": node_a, "b1": node_b})

    redis_server.stop()
    for node in (node_a, node_b):
        await asyncio.to_thread(
            wait_until, lambda n=node: status(n.admin_url)["redis"] == "down", 10
        )
        # Degraded, not out of rotation: the node still serves its own rooms.
        assert http_status(f"{node.admin_url}/readyz") == 200
        assert metric(node.admin_url, "iofleet_fanout_outages_total") == 1
    assert isinstance(status(node_a.admin_url)["fanout_down_s"], float)
    # Emits during the outage: the sender's node still delivers locally, what
    # other nodes need waits in the outbox (counted), nobody is disconnected.
    mark = len(js.messages)
    for i in range(20):
        assert (await js.call("a1", "chat:message", {"room": "r", "text": f"outage {i}"}))["ok"]
    await js.wait_for(
        lambda m: (
            m.get("client") == "a2"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "outage 19"
        ),
        start=mark,
    )
    assert metric(node_a.admin_url, "iofleet_fanout_publish_failures_total") >= 20
    assert metric(node_a.admin_url, "iofleet_fanout_outbox") >= 20
    assert metric(node_a.admin_url, "iofleet_fanout_up") == 0
    log_lines = node_a.log_entries()
    publish_logs = [e for e in log_lines if e.get("event") == "fanout.publish_failed"]
    assert 1 <= len(publish_logs) <= 2  # once per burst, not once per message
    assert not [m for m in js.messages[mark:] if m.get("type") == "disconnect"]
    assert http_status(f"{node_a.admin_url}/healthz") == 200
    assert http_status(f"{node_a.admin_url}/readyz") == 200

    # Redis comes back on the same port: the fan-out recovers alone, b1 gets
    # every outage message from node A's outbox, in order, then what follows.
    redis_server.start()
    for node in (node_a, node_b):
        await asyncio.to_thread(wait_until, lambda n=node: status(n.admin_url)["redis"] == "up", 15)
        assert status(node.admin_url)["fanout_down_s"] is None
    assert (await js.call("a1", "chat:message", {"room": "r", "text": "back"}))["ok"]
    await js.wait_for(
        lambda m: (
            m.get("client") == "b1"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "back"
        ),
        timeout=OUTBOX_DELIVERED_WITHIN_SECONDS,
        start=mark,
    )
    assert texts_to(js, "b1", mark) == [f"outage {i}" for i in range(20)] + ["back"]
    # The drainer pops a message after Redis acknowledges its publish, which can be just
    # after b1 has it (seen on a loaded CI machine): wait for the gauge, briefly.
    await asyncio.to_thread(
        wait_until, lambda: metric(node_a.admin_url, "iofleet_fanout_outbox") == 0, 5
    )
    assert (
        metric_or_zero(node_a.admin_url, "iofleet_fanout_dropped_total", {"reason": "overflow"})
        == 0
    )
    mark = len(js.messages)
    assert (await js.call("b1", "chat:message", {"room": "r", "text": "back too"}))["ok"]
    await js.wait_for(
        lambda m: (
            m.get("client") == "a1"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "back too"
        ),
        start=mark,
    )
    assert metric(node_a.admin_url, "iofleet_fanout_up") == 1


async def test_outbox_overflow_drops_the_oldest_and_counts_them(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_FANOUT_OUTBOX_MESSAGES": "5"}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    await join_room(js, {"a1": node_a, "b1": node_b})
    redis_server.stop()
    await asyncio.to_thread(wait_until, lambda: status(node_a.admin_url)["redis"] == "down", 10)
    mark = len(js.messages)
    for i in range(12):
        assert (await js.call("a1", "chat:message", {"room": "r", "text": f"outage {i}"}))["ok"]
    assert metric(node_a.admin_url, "iofleet_fanout_outbox") == 5
    dropped = {"reason": "overflow"}
    assert metric(node_a.admin_url, "iofleet_fanout_dropped_total", dropped) == 7
    drops = [e for e in node_a.log_entries() if e.get("event") == "fanout.outbox_dropped"]
    assert len(drops) == 1  # once per burst
    redis_server.start()
    await js.wait_for(
        lambda m: (
            m.get("client") == "b1"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "outage 11"
        ),
        timeout=OUTBOX_DELIVERED_WITHIN_SECONDS + 10,  # includes the restart itself
        start=mark,
    )
    assert texts_to(js, "b1", mark) == [f"outage {i}" for i in range(7, 12)]


async def test_outbox_drops_what_outlived_its_age(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_FANOUT_OUTBOX_SECONDS": "1"}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    await join_room(js, {"a1": node_a, "b1": node_b})
    redis_server.stop()
    await asyncio.to_thread(wait_until, lambda: status(node_a.admin_url)["redis"] == "down", 10)
    mark = len(js.messages)
    for i in range(3):
        assert (await js.call("a1", "chat:message", {"room": "r", "text": f"stale {i}"}))["ok"]
    await asyncio.sleep(1.5)
    assert (await js.call("a1", "chat:message", {"room": "r", "text": "fresh"}))["ok"]
    expired = {"reason": "expired"}
    assert metric(node_a.admin_url, "iofleet_fanout_dropped_total", expired) == 3
    assert metric(node_a.admin_url, "iofleet_fanout_outbox") == 1
    redis_server.start()
    await js.wait_for(
        lambda m: m.get("client") == "b1" and m.get("event") == "chat:message",
        timeout=OUTBOX_DELIVERED_WITHIN_SECONDS + 10,
        start=mark,
    )
    assert texts_to(js, "b1", mark) == ["fresh"]


def texts_to(js: JsClients, client: str, start: int) -> list[str]:
    """The chat texts `client` received since message `start`, in arrival order."""
    return [
        m["args"][0]["text"]
        for m in js.messages[start:]
        if m.get("client") == client and m.get("event") == "chat:message"
    ]


async def test_shutdown_does_not_hang_when_redis_died_first(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    node = start_server(
        "node-x",
        IOFLEET_REDIS_URL=redis_server.url,
        IOFLEET_DRAIN_DELAY="0",
        IOFLEET_DRAIN_SECONDS="1",
    )
    await js.open("c", node.url, auth={"token": make_token("c")}, reconnection=False)
    await js.wait_client("c", "connect")
    redis_server.stop()
    await asyncio.sleep(0.5)
    node.signal()
    assert await asyncio.to_thread(node.wait_exit, 15) == 0


async def test_a_node_started_during_an_outage_is_ready_and_serves(
    start_server, js: JsClients
) -> None:
    from iofleet.processes import free_port

    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    node = start_server("node-late", IOFLEET_REDIS_URL=nothing_there)  # waits for /readyz 200
    assert status(node.admin_url)["redis"] == "down"
    await js.open("late", node.url, auth={"token": make_token("late")}, transports=["websocket"])
    await js.wait_client("late", "connect")
    ack = await js.call("late", "room:join", {"room": "r"})
    assert ack["ok"], ack
