"""A client's own packets (acks, which go out through `ReleasingSocket.send_one`,
written at once when nothing waits before them) keep their order with the room
broadcasts and sid emits of the same handler, with both stock clients, over
WebSocket, long-polling and an upgrade in progress; a client that does not read
its acks is dropped as a slow consumer like one that does not read broadcasts."""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import orjson

from tests.server.test_broadcast import StalledClient
from tests.support.jsclient import JsClients
from tests.support.metrics import metric
from tests.support.procs import make_token, wait_until

APP = {"IOFLEET_HANDLERS": "tests.server.order_app:register", "IOFLEET_RATE_LIMIT": "100000"}
# Under python-engineio's 16 packets per long-polling POST (a client batches what it
# sends while a POST is out; the server refuses a larger payload).
CALLS = 12
# Per call, in this order: the room broadcast, the sid emit, the ack.
EXPECTED = [item for k in range(CALLS) for item in (("room", k), ("sid", k), ("ack", k))]


async def py_sequence(client: Any, room: str) -> list[tuple[str, int]]:
    seen: list[tuple[str, int]] = []

    async def on_seq(data: dict[str, Any]) -> None:
        seen.append((data["part"], data["k"]))

    client.sio.on("seq", on_seq)
    assert (await client.sio.call("room:join", {"room": room}, timeout=10))["ok"]
    for k in range(CALLS):  # all sent before the first ack is read
        await client.sio.emit(
            "mix", {"room": room, "k": k}, callback=lambda r: seen.append(("ack", r["k"]))
        )
    with contextlib.suppress(TimeoutError):
        await client.wait(lambda: len(seen) >= len(EXPECTED), timeout=15)
    return seen


async def js_sequence(js: JsClients, name: str, room: str) -> list[tuple[str, int]]:
    assert (await js.call(name, "room:join", {"room": room}))["ok"]
    start = len(js.messages)
    ack_ids = [await js.send_call(name, "mix", {"room": room, "k": k}) for k in range(CALLS)]
    await js.wait_for(lambda m: m.get("type") == "ack" and m.get("id") == ack_ids[-1], 15, start)
    seen = []
    for m in js.messages[start:]:
        if m.get("client") != name:
            continue
        if m.get("type") == "event" and m.get("event") == "seq":
            seen.append((m["args"][0]["part"], m["args"][0]["k"]))
        elif m.get("type") == "ack" and m.get("id") in ack_ids:
            seen.append(("ack", (m.get("response") or {}).get("k")))
    return seen


async def test_acks_keep_order_with_broadcasts_and_sid_emits(
    start_server, js: JsClients, py_clients
) -> None:
    server = start_server("order", **APP)
    transports = {
        "ws": ["websocket"],
        "poll": ["polling"],
        "upgrade": ["polling", "websocket"],  # calls sent while the upgrade runs
    }
    for kind, chosen in transports.items():
        await js.open(f"js-{kind}", server.url, auth={"token": make_token(kind)}, transports=chosen)
    for kind in transports:
        await js.wait_client(f"js-{kind}", "connect")
    py = {
        kind: await py_clients(server.url, user=f"py-{kind}", transports=chosen)
        for kind, chosen in transports.items()
    }
    results = await asyncio.gather(
        *(py_sequence(client, f"room-py-{kind}") for kind, client in py.items()),
        *(js_sequence(js, f"js-{kind}", f"room-js-{kind}") for kind in transports),
    )
    names = [f"py-{kind}" for kind in transports] + [f"js-{kind}" for kind in transports]
    for name, sequence in zip(names, results, strict=True):
        assert sequence == EXPECTED, name


async def test_a_client_that_does_not_read_its_acks_is_dropped(start_server) -> None:
    server = start_server("slow-acks", **APP)
    stalled = StalledClient(server.port)
    stalled.join(make_token("stalled"), "room")
    call = stalled._frame(b"4299" + orjson.dumps(["big", {"size": 3900}]))
    with contextlib.closing(stalled.sock):
        for _ in range(100):  # bounded: 4,000 calls at most
            with contextlib.suppress(OSError):
                stalled.sock.sendall(call * 40)
            await asyncio.sleep(0.02)
            if metric(server.admin_url, "iofleet_slow_consumers_total") >= 1:
                break
        assert metric(server.admin_url, "iofleet_slow_consumers_total") == 1
        wait_until(stalled.dropped, timeout=10, what="the stalled client's connection closed")
    entries = [e for e in server.log_entries() if e.get("event") == "send.slow_consumer"]
    assert len(entries) == 1 and entries[0]["user"] == "stalled", entries
