"""Room limits, the CORS allowlist, selective permessage-deflate, no secrets in logs."""

from __future__ import annotations

import asyncio
import json
import urllib.error
import urllib.request
from typing import Any

import socketio

from tests.support.jsclient import JsClients
from tests.support.procs import (
    TEST_ADMIN_TOKEN,
    TEST_JWT_SECRET,
    ServerProcess,
    http_status,
    make_token,
)
from tests.support.ws_frames import open_websocket, read_frame, send_text


async def test_max_rooms_per_user(start_server, js: JsClients) -> None:
    server = start_server("rooms", IOFLEET_MAX_ROOMS_PER_USER="2")
    # Two tabs of one user share the limit.
    for tab in ("tab1", "tab2"):
        await js.open(tab, server.url, auth={"token": make_token("roomy")})
        await js.wait_client(tab, "connect")
    assert (await js.call("tab1", "room:join", {"room": "one"}))["ok"]
    assert (await js.call("tab2", "room:join", {"room": "two"}))["ok"]
    assert await js.call("tab1", "room:join", {"room": "three"}) == {
        "ok": False,
        "error": "room limit reached",
    }
    assert (await js.call("tab1", "room:join", {"room": "two"}))["ok"]  # already the user's
    assert (await js.call("tab2", "room:leave", {"room": "two"}))["ok"]
    # tab1 still holds "two"; leave it too, then there is room for a new one.
    assert (await js.call("tab1", "room:leave", {"room": "two"}))["ok"]
    assert (await js.call("tab1", "room:join", {"room": "three"}))["ok"]


ROOMS_APP = "tests.server.rooms_app:register"


async def rooms_of(client: socketio.AsyncClient, namespace: str = "/") -> list[str]:
    return list(await client.call("rooms", namespace=namespace, timeout=10))


async def until_rooms(client: socketio.AsyncClient, rooms: list[str], namespace: str = "/") -> None:
    """Until the client's rooms on `namespace` are `rooms` (another node's change
    arrives through Redis), at most 10 s."""
    for _ in range(200):
        if await rooms_of(client, namespace) == rooms:
            return
        await asyncio.sleep(0.05)
    assert await rooms_of(client, namespace) == rooms


async def test_room_limit_stays_exact_with_changes_from_another_node(
    start_server, redis_server
) -> None:
    """Rooms changed by another node (its close_room, its enter_room for a sid here,
    its disconnect of a sid here on a second namespace) reach this node's count of
    the user's rooms as they happen: the limit is never off by one either way."""
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_HANDLERS": ROOMS_APP}
    node_a = start_server("node-a", IOFLEET_MAX_ROOMS_PER_USER="2", **env)
    node_b = start_server("node-b", IOFLEET_MAX_ROOMS_PER_USER="2", **env)
    user = socketio.AsyncClient()
    operator = socketio.AsyncClient()
    try:
        for client, node, name in ((user, node_a, "limited"), (operator, node_b, "operator")):
            await client.connect(
                node.url,
                namespaces=["/", "/other"],
                auth={"token": make_token(name)},
                transports=["websocket"],
                wait_timeout=10,
            )
        refused = {"ok": False, "error": "room limit reached"}

        async def join(room: str, namespace: str = "/") -> Any:
            return await user.call("join", {"room": room}, namespace=namespace, timeout=10)

        # Both namespaces count toward the one limit.
        assert await join("r1") == {"ok": True}
        assert await join("o1", "/other") == {"ok": True}
        assert await join("r2") == refused
        # Node B disconnects the user's /other socket: its room no longer counts.
        other_sid = user.get_sid("/other")
        kick = {"sid": other_sid}
        assert await operator.call("kick", kick, namespace="/other", timeout=10) == {"ok": True}
        for _ in range(200):
            if "/other" not in user.namespaces:
                break
            await asyncio.sleep(0.05)
        assert "/other" not in user.namespaces, "node B's disconnect of /other never arrived"
        assert await join("r2") == {"ok": True}
        assert await join("r3") == refused
        # Node B puts the user's / socket in a third room (not refusable over Redis,
        # but counted here), then closes r1: two rooms left, r2 and x, at the limit.
        put = {"sid": user.get_sid("/"), "room": "x"}
        assert await operator.call("put", put, timeout=10) == {"ok": True}
        await until_rooms(user, ["r1", "r2", "x"])
        assert await operator.call("close", {"room": "r1"}, timeout=10) == {"ok": True}
        await until_rooms(user, ["r2", "x"])
        assert await join("r3") == refused
        assert await user.call("leave", {"room": "x"}, timeout=10) == {"ok": True}
        assert await join("r3") == {"ok": True}
        assert await rooms_of(user) == ["r2", "r3"]
    finally:
        await user.disconnect()
        await operator.disconnect()


def handshake_status(server: ServerProcess, origin: str) -> int:
    request = urllib.request.Request(
        f"{server.url}/socket.io/?EIO=4&transport=polling", headers={"Origin": origin}
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as error:
        return int(error.code)


def test_cors_allowlist(start_server) -> None:
    server = start_server("cors", IOFLEET_CORS_ORIGINS="https://app.example.com")
    assert handshake_status(server, "https://app.example.com") == 200
    assert handshake_status(server, "https://evil.example.com") == 400
    default = start_server("cors-default", IOFLEET_CORS_ORIGINS="")
    assert handshake_status(default, "https://evil.example.com") == 400  # same origin only


async def websocket_status(server: ServerProcess, origin: str) -> str:
    head, _, writer = await open_websocket(server.port, extra_headers=f"Origin: {origin}\r\n")
    writer.close()
    return head.split()[1]


async def test_cors_allowlist_on_websocket_connects(start_server) -> None:
    """Connects taken before aiohttp (server/net/ws_accept.py) keep to the allowlist too."""
    server = start_server("cors-ws", IOFLEET_CORS_ORIGINS="https://app.example.com")
    assert await websocket_status(server, "https://app.example.com") == "101"
    assert await websocket_status(server, "https://evil.example.com") == "400"


DEFLATE_OFFER = "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"


async def test_no_deflate_unless_enabled(start_server) -> None:
    """By default (as Node's `perMessageDeflate: false`) an offer of deflate is
    declined and the connection is served below aiohttp, frames plain."""
    server = start_server("plain")
    head, reader, writer = await open_websocket(server.port, extra_headers=DEFLATE_OFFER)
    assert "101" in head.splitlines()[0] and "permessage-deflate" not in head
    try:
        await read_frame(reader)  # OPEN
        await send_text(writer, "40" + json.dumps({"token": make_token("plain")}))
        await read_frame(reader)  # CONNECT
        await read_frame(reader)  # server:hello
        await send_text(writer, '420["room:join",{"room":"z"}]')
        await read_frame(reader)
        await send_text(writer, '421["chat:message",{"room":"z","text":"' + "x" * 3000 + '"}]')
        got = [await read_frame(reader) for _ in range(2)]  # the broadcast and the ack
        assert not any(compressed for compressed, _, _ in got)
        assert sorted(len(payload) > 3000 for _, _, payload in got) == [False, True]
    finally:
        writer.close()


async def test_permessage_deflate_only_above_1kb(start_server) -> None:
    server = start_server("deflate", IOFLEET_WS_COMPRESSION="true")
    head, reader, writer = await open_websocket(server.port, extra_headers=DEFLATE_OFFER)
    assert "101" in head.splitlines()[0] and "permessage-deflate" in head
    try:
        compressed, _, opening = await read_frame(reader)
        assert not compressed and opening.startswith(b"0{")  # small: sent plain
        await send_text(writer, "40" + json.dumps({"token": make_token("deflate")}))
        frames = [await read_frame(reader) for _ in range(2)]  # CONNECT, then server:hello
        assert all(not c for c, _, _ in frames)
        await send_text(writer, '420["room:join",{"room":"z"}]')
        assert not (await read_frame(reader))[0]
        await send_text(writer, '421["chat:message",{"room":"z","text":"' + "x" * 3000 + '"}]')
        got = [await read_frame(reader) for _ in range(2)]  # the broadcast and the ack
        big = [frame for frame in got if frame[0]]
        small = [frame for frame in got if not frame[0]]
        assert len(big) == 1 and len(big[0][2]) < 500  # 3 KB of x deflates to little
        assert small and small[0][2].startswith(b"431")
    finally:
        writer.close()


async def test_tokens_and_secrets_never_reach_the_logs(cluster, js: JsClients) -> None:
    node_a, _ = cluster
    token = make_token("careful")
    bad = make_token("careful", secret="wrong-secret-0123456789abcdefghijkl")
    await js.open("good", node_a.url, auth={"token": token})
    await js.wait_client("good", "connect")
    await js.open("bad", node_a.url, auth={"token": bad}, reconnection=False)
    await js.wait_client("bad", "connect_error")
    wrong = {"Authorization": "Bearer wrong-admin-token"}
    assert http_status(f"{node_a.admin_url}/admin/drain", method="POST", headers=wrong) == 401
    log = node_a.log()
    assert '"event":"connect.refused"' in log
    for secret in (token, bad, TEST_JWT_SECRET, TEST_ADMIN_TOKEN, "wrong-admin-token"):
        assert secret not in log
    for part in token.split("."):
        assert part not in log
