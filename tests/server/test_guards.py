"""Bad input gets a clear error, only the offender is affected, the node stays up."""

from __future__ import annotations

import asyncio
import json
import urllib.request

import jwt
import pytest
import socketio
import websockets

from tests.server.conftest import PyClient
from tests.support.jsclient import JsClients
from tests.support.metrics import metric_or_zero
from tests.support.procs import TEST_JWT_SECRET, ServerProcess, http_status, make_token, wait_until

WRONG_SECRET = "not-the-server-secret-0123456789abcdef"


def ws_url(server: ServerProcess) -> str:
    return f"ws://127.0.0.1:{server.port}/socket.io/?EIO=4&transport=websocket"


@pytest.mark.parametrize(
    ("auth", "message"),
    [
        (None, "auth: token missing"),
        ({"token": "not.a.jwt"}, "auth: malformed token"),
        ({"token": make_token("late", ttl=-120)}, "auth: token expired"),
        ({"token": make_token("forger", secret=WRONG_SECRET)}, "auth: bad signature"),
        (
            {"token": jwt.encode({"exp": 9999999999}, TEST_JWT_SECRET, algorithm="HS256")},
            "auth: token has no 'sub' claim",
        ),
    ],
    ids=["missing", "malformed", "expired", "wrong-signature", "no-subject"],
)
async def test_each_auth_failure_is_a_clear_connect_error(
    cluster, js: JsClients, auth: dict | None, message: str
) -> None:
    node_a, _ = cluster
    options = {"reconnection": False}
    if auth is not None:
        options["auth"] = auth
    await js.open("c", node_a.url, **options)
    error = await js.wait_client("c", "connect_error")
    assert error["message"] == message
    assert not js.seen("c", "connect")


async def test_python_client_bearer_header_and_refusal(cluster) -> None:
    node_a, _ = cluster
    client = PyClient()
    await client.sio.connect(
        node_a.url,
        headers={"Authorization": f"Bearer {make_token('header-user')}"},
        transports=["polling"],
    )
    await client.wait(lambda: client.nodes)
    await client.sio.disconnect()
    refused = socketio.AsyncClient(reconnection=False)
    reasons: list[object] = []
    refused.on("connect_error", reasons.append)
    with pytest.raises(socketio.exceptions.ConnectionError):
        await refused.connect(
            node_a.url, auth={"token": make_token("x", secret=WRONG_SECRET)}, wait_timeout=5
        )
    assert reasons == [{"message": "auth: bad signature"}]


async def test_capacity_refusal(start_server, js: JsClients) -> None:
    server = start_server("small", IOFLEET_MAX_CONNECTIONS="2")
    for name in ("one", "two"):
        await js.open(name, server.url, auth={"token": make_token(name)})
        await js.wait_client(name, "connect")
    await js.open("three", server.url, auth={"token": make_token("three")}, reconnection=False)
    error = await js.wait_client("three", "connect_error")
    assert error["message"] == "server at capacity"
    # Room again once someone leaves.
    await js.close("one")
    # The slot frees once the server has seen the close: wait for that, not a guess.
    status = f"{server.admin_url}/admin/status"
    await asyncio.to_thread(wait_until, lambda: status_connections(status) == 1, 10)
    await js.open("four", server.url, auth={"token": make_token("four")})
    await js.wait_client("four", "connect")


async def test_oversized_message_closes_only_the_sender(start_server, js: JsClients) -> None:
    server = start_server("limits", IOFLEET_MAX_MESSAGE_BYTES="4096")
    for name in ("big", "small"):
        await js.open(name, server.url, auth={"token": make_token(name)}, transports=["websocket"])
        await js.wait_client(name, "connect")
        assert (await js.call(name, "room:join", {"room": "r"}))["ok"]
    start = len(js.messages)
    await js.emit("big", "chat:message", {"room": "r", "text": "x" * 3900 + "y" * 900})
    dropped = await js.wait_client("big", "disconnect", start=start)
    assert dropped["reason"] == "transport close"  # so the client reconnects by itself
    assert not js.seen("small", "disconnect")
    assert await js.call("small", "chat:message", {"room": "r", "text": "still here"}) == {
        "ok": True
    }
    await asyncio.sleep(0.2)
    lines = server.log_entries()
    oversize = [entry for entry in lines if entry.get("event") == "packet.oversize"]
    assert len(oversize) == 1 and "over 4096 bytes" in oversize[0]["detail"]
    # The stock client comes back on its own.
    await js.wait_for(
        lambda m: m.get("client") == "big" and m.get("type") == "connect", start=start, timeout=15
    )


async def test_rate_limit_error_acks_then_disconnects_only_the_abuser(
    start_server, js: JsClients
) -> None:
    server = start_server(
        "ratelimited",
        IOFLEET_RATE_LIMIT="5",
        IOFLEET_RATE_LIMIT_BURST="5",
        IOFLEET_RATE_LIMIT_STRIKES="30",
    )
    for name in ("flooder", "calm"):
        await js.open(name, server.url, auth={"token": make_token(name)}, transports=["websocket"])
        await js.wait_client(name, "connect")
    acks = await asyncio.gather(
        *(js.call("flooder", "room:join", {"room": "r"}) for _ in range(10))
    )
    refused = [a for a in acks if a.get("error") == "rate limited"]
    assert 1 <= len(refused) <= 6 and len(refused) + sum(1 for a in acks if a["ok"]) == 10

    # Sustained abuse: over the strike count, the flooder's transport is closed.
    start = len(js.messages)
    for _ in range(60):
        await js.emit("flooder", "typing:stop", {"room": "r"})
    await js.wait_client("flooder", "disconnect", start=start)
    assert js.seen("flooder", "event", "error")  # told once, as an `error` event
    assert not js.seen("calm", "disconnect")
    assert (await js.call("calm", "room:join", {"room": "r"}))["ok"]
    assert '"event":"ratelimit.disconnect"' in server.log()


async def test_malformed_packets_close_only_the_offender(cluster, js: JsClients) -> None:
    node_a, _ = cluster
    await js.open("bystander", node_a.url, auth={"token": make_token("bystander")})
    await js.wait_client("bystander", "connect")
    assert (await js.call("bystander", "room:join", {"room": "calm"}))["ok"]

    malformed_before = metric_or_zero(
        node_a.admin_url, "iofleet_events_rejected_total", {"reason": "malformed"}
    )
    token = make_token("raw")
    cases = {
        "not engine.io": "hello there",
        "broken socket.io json": '42["chat:message",{"room":',
        "event without a name": "42[]",
        "unknown socket.io type": "49",
        "engine.io binary junk": b"\x00\xff\xfe",
    }
    for label, bad in cases.items():
        async with websockets.connect(ws_url(node_a)) as ws:
            opening = await ws.recv()
            assert opening.startswith("0{"), label
            await ws.send("40" + json.dumps({"token": token}))
            assert (await ws.recv()).startswith("40"), label
            await ws.send(bad)
            # The server ends the offender's socket (a binary frame is legal
            # Engine.IO framing; it is refused as an unexpected attachment).
            with pytest.raises(websockets.ConnectionClosed):
                for _ in range(20):
                    await asyncio.wait_for(ws.recv(), 5)
    # The node is up and everyone else unaffected.
    assert http_status(f"{node_a.admin_url}/healthz") == 200
    assert await js.call("bystander", "chat:message", {"room": "calm", "text": "ok"}) == {
        "ok": True
    }
    assert not js.seen("bystander", "disconnect")
    # Each refusal is counted; the log says it once per kind and interval (a client
    # can cause these at will), not once per packet.
    counted = metric_or_zero(
        node_a.admin_url, "iofleet_events_rejected_total", {"reason": "malformed"}
    )
    assert counted - malformed_before >= len(cases) - 1
    entries = node_a.log_entries()
    malformed = [e for e in entries if e.get("event") == "packet.malformed"]
    assert 1 <= len(malformed) < len(cases) - 1
    assert all("\n" not in line for line in node_a.log().splitlines())


async def test_auth_none_only_when_asked(start_server, py_clients) -> None:
    server = start_server("open", IOFLEET_AUTH="none", IOFLEET_JWT_SECRET="")
    client = PyClient()
    await client.sio.connect(server.url, transports=["websocket"])
    await client.wait(lambda: client.nodes)
    await client.sio.disconnect()


def status_connections(status_url: str) -> int:
    with urllib.request.urlopen(status_url, timeout=5) as response:
        return int(json.loads(response.read())["connections"])
