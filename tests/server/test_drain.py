"""The drain contract end to end: two nodes behind a real HAProxy, stock clients
(official JS over WebSocket and polling, python-socketio) on the drained node."""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path

import aiohttp

from iofleet.balancers import haproxy_options, start_haproxy
from iofleet.render import Backend
from tests.server.conftest import PyClient
from tests.support.jsclient import JsClients
from tests.support.procs import (
    TEST_ADMIN_TOKEN,
    RedisServer,
    ServerProcess,
    free_port,
    http_status,
    make_token,
)
from tests.support.ws_frames import open_websocket

DRAIN_DELAY = 2.0
DRAIN_SECONDS = 4.0
ROOM = "drain-room"


async def test_sigterm_drain_moves_every_client_to_the_other_node(
    redis_server: RedisServer, start_server, js: JsClients, tmp_path: Path
) -> None:
    env = {
        "IOFLEET_REDIS_URL": redis_server.url,
        "IOFLEET_DRAIN_DELAY": str(DRAIN_DELAY),
        "IOFLEET_DRAIN_SECONDS": str(DRAIN_SECONDS),
        "IOFLEET_PING_INTERVAL": "5",
        "IOFLEET_PING_TIMEOUT": "5",
    }
    node_a: ServerProcess = start_server("node-a", **env)
    node_b: ServerProcess = start_server("node-b", **env)
    backends = tuple(
        Backend(n.node_id, "127.0.0.1", n.port, n.admin_port) for n in (node_a, node_b)
    )
    balancer = start_haproxy(
        haproxy_options("127.0.0.1", free_port(), backends, tmp_path), tmp_path
    )
    try:
        await _drain_scenario(node_a, node_b, balancer.url, js)
    finally:
        balancer.stop()


async def _drain_scenario(
    node_a: ServerProcess, node_b: ServerProcess, url: str, js: JsClients
) -> None:
    # Official JS clients over both transports, plus python-socketio clients.
    names = [f"js-ws-{i}" for i in range(5)] + [f"js-poll-{i}" for i in range(5)]
    for name in names:
        transports = ["polling"] if "poll" in name else ["websocket"]
        await js.open(name, url, auth={"token": make_token(name)}, transports=transports)
    py = []
    sessions: list[aiohttp.ClientSession] = []
    for i, transports in enumerate((["websocket"], ["polling"], ["websocket"], ["polling"])):
        # aiohttp's default jar drops cookies from IP hosts; the balancer's
        # stickiness cookie must survive for polling through 127.0.0.1.
        session = aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True))
        sessions.append(session)
        client = PyClient(reconnection_delay=0.2, reconnection_delay_max=1, http_session=session)
        await client.sio.connect(url, auth={"token": make_token(f"py-{i}")}, transports=transports)
        py.append(client)
    node_of = {}
    for name in names:
        hello = await js.wait_for(
            lambda m, n=name: m.get("client") == n and m.get("event") == "server:hello"
        )
        node_of[name] = hello["args"][0]["node_id"]
        assert (await js.call(name, "room:join", {"room": ROOM}))["ok"]
    for client in py:
        await client.wait(lambda c=client: c.nodes)
        await client.sio.call("room:join", {"room": ROOM})
    on_a = [n for n in names if node_of[n] == "node-a"]
    py_on_a = [c for c in py if c.nodes[0] == "node-a"]
    assert len(on_a) >= 3 and len(on_a) <= len(names) - 3, node_of  # leastconn spreads them
    assert py_on_a and len(py_on_a) < len(py)

    # 1. Trigger.
    mark = len(js.messages)
    drain_started = time.time()
    node_a.signal(signal.SIGTERM)
    # 2. At once: not ready, and new handshakes refused with 503 (stock clients retry).
    await asyncio.sleep(0.3)
    assert http_status(f"{node_a.admin_url}/readyz") == 503
    assert http_status(f"{node_a.url}/socket.io/?EIO=4&transport=polling") == 503
    assert http_status(f"{node_a.url}/socket.io/?EIO=4&transport=polling") == 503
    head, _, ws_writer = await open_websocket(node_a.port)  # a WebSocket connect too
    ws_writer.close()
    assert head.startswith("http/1.1 503"), head
    # New clients through the balancer land on node-b without a single failure.
    await js.open("late", url, auth={"token": make_token("late")})
    late = await js.wait_for(
        lambda m: m.get("client") == "late" and m.get("event") == "server:hello", start=mark
    )
    assert late["args"][0]["node_id"] == "node-b"

    # 3. Closed in batches after the delay, spread over the window; 4. exit 0.
    exit_code = await asyncio.to_thread(node_a.wait_exit, DRAIN_DELAY + DRAIN_SECONDS + 15)
    assert exit_code == 0
    assert '"event":"drain.done"' in node_a.log()
    drops = {}
    for name in on_a:
        drop = await js.wait_for(
            lambda m, n=name: m.get("client") == n and m.get("type") == "disconnect", start=mark
        )
        assert drop["reason"] in ("transport close", "transport error"), drop
        drops[name] = drop["t"]
    first, last = min(drops.values()), max(drops.values())
    assert first - drain_started >= DRAIN_DELAY - 0.2
    assert last - drain_started <= DRAIN_DELAY + DRAIN_SECONDS + 1.5
    assert last - first >= 0.3 * DRAIN_SECONDS, drops  # batches, not all at once
    assert not [m for m in js.messages[mark:] if m.get("type") == "connect_error"]

    # Every drained client reconnected by itself, to node-b, and gets new messages.
    for name in on_a:
        hello = await js.wait_for(
            lambda m, n=name: m.get("client") == n and m.get("event") == "server:hello",
            start=mark,
            timeout=15,
        )
        assert hello["args"][0]["node_id"] == "node-b"
        assert (await js.call(name, "room:join", {"room": ROOM}))["ok"]
    for client in py_on_a:
        await client.wait(lambda c=client: len(c.nodes) >= 2, timeout=15)
        assert client.nodes[-1] == "node-b"
        await client.sio.call("room:join", {"room": ROOM})
    await js.call(names[0], "chat:message", {"room": ROOM, "text": "after the drain"})
    for name in names:
        await js.wait_for(
            lambda m, n=name: (
                m.get("client") == n
                and m.get("event") == "chat:message"
                and m["args"][0]["text"] == "after the drain"
            ),
            start=mark,
        )
    for client in py:
        await client.wait(
            lambda c=client: any(m["text"] == "after the drain" for m in c.received("chat:message"))
        )
    await asyncio.gather(*(client.sio.shutdown() for client in py))
    for session in sessions:
        await session.close()


async def test_admin_drain_waits_until_done(start_server, js: JsClients) -> None:
    import urllib.request

    server = start_server("waiter", IOFLEET_DRAIN_DELAY="0.2", IOFLEET_DRAIN_SECONDS="1")
    for i in range(3):
        await js.open(f"c{i}", server.url, auth={"token": make_token(f"c{i}")}, reconnection=False)
        await js.wait_client(f"c{i}", "connect")
    request = urllib.request.Request(
        f"{server.admin_url}/admin/drain?wait=true",
        method="POST",
        headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
    )
    started = time.monotonic()
    body = await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=15).read())
    assert b'"done": true' in body and b'"connections": 0' in body
    assert time.monotonic() - started >= 0.2
    for i in range(3):
        assert (await js.wait_client(f"c{i}", "disconnect"))["reason"] == "transport close"
    assert await asyncio.to_thread(server.wait_exit, 10) == 0
