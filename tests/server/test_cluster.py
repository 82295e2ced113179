"""Two real nodes sharing a real Redis; stock clients on both."""

from __future__ import annotations

import asyncio
import json
import urllib.request

from tests.server.conftest import PyClient
from tests.support.jsclient import JsClients
from tests.support.metrics import metric, metric_or_zero
from tests.support.procs import TEST_ADMIN_TOKEN, ServerProcess, http_status, make_token, wait_until

CONTRACT_METRICS = (
    "iofleet_connections ",
    "iofleet_connections_total ",
    "iofleet_connections_rejected_total",
    "iofleet_messages_received_total",
    "iofleet_messages_sent_total",
    "iofleet_event_handler_seconds_bucket",
    "iofleet_rooms ",
    "iofleet_event_loop_lag_seconds ",
    "iofleet_draining ",
    "iofleet_fanout_publish_failures_total ",
    # Beside the connection gauge: what an operator needs to see held memory (issue 13).
    "iofleet_engineio_sockets ",
    "process_resident_memory_bytes ",
    "process_cpu_seconds_total ",
    "process_open_fds ",
    "process_start_time_seconds ",
)


def get_json(url: str) -> dict:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


async def test_room_broadcast_crosses_nodes_both_ways(cluster, js: JsClients, py_clients) -> None:
    node_a, node_b = cluster
    await js.open("alice", node_a.url, auth={"token": make_token("alice")})
    hello = await js.wait_for(lambda m: m.get("event") == "server:hello")
    assert hello["args"][0]["node_id"] == "node-a"
    bob: PyClient = await py_clients(node_b.url, user="bob")
    assert bob.nodes == ["node-b"]

    ack = await js.call("alice", "room:join", {"room": "general"})
    assert ack == {"ok": True, "room": "general", "members": ["alice"]}
    assert (await bob.sio.call("room:join", {"room": "general"}))["ok"] is True

    # A -> B
    sent_before = metric(node_b.admin_url, "iofleet_messages_sent_total")
    received = ("iofleet_messages_received_total", {"event": "chat:message"})
    received_before = metric_or_zero(node_a.admin_url, *received)
    assert await js.call("alice", "chat:message", {"room": "general", "text": "hi bob"}) == {
        "ok": True
    }
    await bob.wait(lambda: bob.received("chat:message"))
    message = bob.received("chat:message")[0]
    assert (
        message["text"] == "hi bob" and message["from"] == "alice" and message["room"] == "general"
    )
    assert isinstance(message["ts"], int)
    assert metric(node_b.admin_url, "iofleet_messages_sent_total") >= sent_before + 1
    assert metric(node_a.admin_url, *received) == received_before + 1

    # B -> A
    await bob.sio.call("chat:message", {"room": "general", "text": "hi alice"})
    got = await js.wait_for(
        lambda m: m.get("event") == "chat:message" and m["args"][0]["text"] == "hi alice"
    )
    assert got["args"][0]["from"] == "bob"


async def test_typing_is_throttled_and_bad_payloads_get_error_acks(cluster, js: JsClients) -> None:
    node_a, node_b = cluster
    await js.open("t1", node_a.url, auth={"token": make_token("typist")})
    await js.open("t2", node_b.url, auth={"token": make_token("watcher")})
    for client in ("t1", "t2"):
        await js.wait_client(client, "connect")
        assert (await js.call(client, "room:join", {"room": "typing-room"}))["ok"]
    first = await js.call("t1", "typing:start", {"room": "typing-room"})
    second = await js.call("t1", "typing:start", {"room": "typing-room"})
    assert first == {"ok": True, "sent": True} and second == {"ok": True, "sent": False}
    update = await js.wait_for(
        lambda m: m.get("client") == "t2" and m.get("event") == "typing:update"
    )
    assert update["args"][0] == {"room": "typing-room", "user": "typist", "typing": True}
    assert not js.seen("t1", "event", "typing:update")  # not echoed to the typist

    assert await js.call("t1", "room:join", {"room": ""}) == {
        "ok": False,
        "error": "room must be 1-64 characters of A-Z a-z 0-9 _ . : -",
    }
    assert (await js.call("t1", "chat:message", "not an object"))["ok"] is False
    assert (await js.call("t1", "chat:message", {"room": "elsewhere", "text": "x"}))["error"] == (
        "join elsewhere first"
    )


async def test_guest_token_flow_and_per_ip_limit(cluster, js: JsClients) -> None:
    node_a, _ = cluster
    request = urllib.request.Request(f"{node_a.url}/auth/guest", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        guest = json.loads(response.read())
    assert guest["user"].startswith("guest-") and guest["expires_in"] == 3600
    await js.open("guest", node_a.url, auth={"token": guest["token"]})
    await js.wait_client("guest", "connect")
    ack = await js.call("guest", "room:join", {"room": "lobby"})
    assert ack["members"] == [guest["user"]]

    # The default allows 10 a minute per address (burst 5): a loop must hit 429.
    statuses = [http_status(f"{node_a.url}/auth/guest", method="POST") for _ in range(12)]
    assert 429 in statuses
    assert set(statuses) <= {200, 429}


async def test_matching_pairs_users_across_nodes_and_relays_only_to_the_peer(
    cluster, js: JsClients
) -> None:
    node_a, node_b = cluster
    await js.open("m1", node_a.url, auth={"token": make_token("matcher-1")})
    await js.open("m2", node_b.url, auth={"token": make_token("matcher-2")})
    await js.open("m3", node_b.url, auth={"token": make_token("bystander")})
    for client in ("m1", "m2", "m3"):
        await js.wait_client(client, "connect")

    assert await js.call("m1", "user:match") == {"ok": True, "status": "waiting"}
    second = await js.call("m2", "user:match")
    assert second["status"] == "matched" and second["peer"] == "matcher-1"
    matched_1 = await js.wait_for(
        lambda m: m.get("client") == "m1" and m.get("event") == "user:matched"
    )
    matched_2 = await js.wait_for(
        lambda m: m.get("client") == "m2" and m.get("event") == "user:matched"
    )
    assert matched_1["args"][0]["peer"] == "matcher-2"
    assert matched_1["args"][0]["room"] == matched_2["args"][0]["room"]

    assert await js.call("m1", "webrtc:offer", {"sdp": "v=0 offer"}) == {"ok": True}
    offer = await js.wait_for(
        lambda m: m.get("client") == "m2" and m.get("event") == "webrtc:offer"
    )
    assert offer["args"][0] == {"from": "matcher-1", "data": {"sdp": "v=0 offer"}}
    await js.call("m2", "webrtc:answer", {"sdp": "v=0 answer"})
    await js.wait_for(lambda m: m.get("client") == "m1" and m.get("event") == "webrtc:answer")
    await js.call("m1", "webrtc:ice", {"candidate": "c1"})
    await js.wait_for(lambda m: m.get("client") == "m2" and m.get("event") == "webrtc:ice")

    # The bystander is not matched: its signals go nowhere, and it saw none.
    assert await js.call("m3", "webrtc:offer", {"sdp": "x"}) == {
        "ok": False,
        "error": "not matched",
    }
    await asyncio.sleep(0.3)
    assert not [m for m in js.seen("m3", "event") if m["event"].startswith(("webrtc:", "user:"))]

    # Leaving ends the match for the peer on the other node.
    await js.close("m1")
    ended = await js.wait_for(
        lambda m: m.get("client") == "m2" and m.get("event") == "user:match:ended"
    )
    assert ended["args"][0]["reason"] == "peer left"


async def test_admin_endpoints(cluster) -> None:
    node_a, _ = cluster
    assert get_json(f"{node_a.admin_url}/healthz") == {"ok": True}
    ready = get_json(f"{node_a.admin_url}/readyz")
    assert ready == {"ready": True, "reasons": [], "draining": False, "redis": "up"}
    status = get_json(f"{node_a.admin_url}/admin/status")
    assert set(status) == {
        "node_id",
        "connections",
        "rooms",
        "draining",
        "uptime_s",
        "redis",
        "fanout_down_s",
        "region_links",
    }
    assert status["node_id"] == "node-a" and status["redis"] == "up"
    assert status["region_links"]["state"] == "unknown"  # no relay in this region
    assert status["fanout_down_s"] is None
    with urllib.request.urlopen(f"{node_a.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for name in CONTRACT_METRICS:
        assert name in text, name
    # The drain lever needs the admin token; the public port does not serve it.
    assert http_status(f"{node_a.admin_url}/admin/drain", method="POST") == 401
    bad = {"Authorization": "Bearer nope"}
    assert http_status(f"{node_a.admin_url}/admin/drain", method="POST", headers=bad) == 401
    assert http_status(f"{node_a.url}/admin/drain", method="POST") == 404
    assert http_status(f"{node_a.url}/metrics") == 404


def test_admin_token_starts_the_drain(start_server) -> None:
    """The right token is what the drain lever needs (a node of its own: it drains)."""
    server: ServerProcess = start_server("drained", IOFLEET_DRAIN_DELAY="30")
    assert http_status(f"{server.admin_url}/readyz") == 200
    good = {"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"}
    assert http_status(f"{server.admin_url}/admin/drain", method="POST", headers=good) in {
        200,
        202,
    }
    assert http_status(f"{server.admin_url}/readyz") == 503


def test_admin_listener_can_be_turned_off(start_server) -> None:
    server: ServerProcess = start_server("no-admin", wait_ready=False, IOFLEET_ADMIN_PORT="0")

    wait_until(lambda: http_status(f"{server.url}/") == 200)
    assert http_status(f"{server.admin_url}/healthz") == 0
