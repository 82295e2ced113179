"""Room limits, the CORS allowlist, selective permessage-deflate, no secrets in logs."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import struct
import urllib.error
import urllib.request

from tests.support.jsclient import JsClients
from tests.support.procs import (
    TEST_ADMIN_TOKEN,
    TEST_JWT_SECRET,
    ServerProcess,
    http_status,
    make_token,
)


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


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(compressed?, opcode, payload) of one server frame (servers never mask)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return bool(first & 0x40), first & 0x0F, await reader.readexactly(length)


async def send_text(writer: asyncio.StreamWriter, text: str) -> None:
    payload = text.encode()
    mask = os.urandom(4)
    header = bytes([0x81])
    if len(payload) < 126:
        header += bytes([0x80 | len(payload)])
    else:
        header += bytes([0x80 | 126]) + struct.pack("!H", len(payload))
    masked = bytes(b ^ mask[i % 4] for i, b in enumerate(payload))
    writer.write(header + mask + masked)
    await writer.drain()


async def test_permessage_deflate_only_above_1kb(start_server) -> None:
    server = start_server("deflate")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    key = base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{server.port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
            "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n\r\n"
        ).encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
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
