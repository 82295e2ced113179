"""Socket.IO v5 conformance, after the reference suite (socket.io-protocol
`test-suite/`, "Socket.IO protocol"), and iofleet's guards on every namespace."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator

import aiohttp
import pytest

from tests.server.conformance_support import (
    CONFORMANCE_ENV,
    conformance_server,
    http,
    next_frame,
    next_non_ping,
    socketio_connection,
    wait_closed,
    ws_url,
)
from tests.support.procs import ServerProcess, http_status, make_token

__all__ = ["conformance_server", "http"]  # fixtures used by name


async def connect_raw(
    http: aiohttp.ClientSession, server: ServerProcess
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(ws_url(server), autoping=False)
    assert (await next_frame(ws)).startswith("0{")
    return ws


def connect_reply(frame: str, prefix: str) -> dict[str, object]:
    assert frame.startswith(prefix), frame
    reply: dict[str, object] = json.loads(frame[len(prefix) :])
    return reply


@pytest.mark.parametrize(
    ("sent", "prefix", "auth_event"),
    [
        ("40", "40", '42["auth",{}]'),
        ('40{"token":"123"}', "40", '42["auth",{"token":"123"}]'),
        ("40/custom,", "40/custom,", '42/custom,["auth",{}]'),
        ('40/custom,{"token":"abc"}', "40/custom,", '42/custom,["auth",{"token":"abc"}]'),
    ],
)
async def test_connect_then_the_apps_first_packet(
    conformance_server: ServerProcess,
    http: aiohttp.ClientSession,
    sent: str,
    prefix: str,
    auth_event: str,
) -> None:
    """CONNECT carries only the sid, and the next packet is the application's
    own: the server core sends nothing the application did not ask for."""
    async with await connect_raw(http, conformance_server) as ws:
        await ws.send_str(sent)
        reply = connect_reply(await next_frame(ws), prefix)
        assert set(reply) == {"sid"} and isinstance(reply["sid"], str)
        assert await next_non_ping(ws) == auth_event


async def test_unknown_namespace_gets_invalid_namespace(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await connect_raw(http, conformance_server) as ws:
        await ws.send_str("40/random")
        assert await next_non_ping(ws) == '44/random,{"message":"Invalid namespace"}'


async def test_invalid_handshake_closes_the_connection(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await connect_raw(http, conformance_server) as ws:
        await ws.send_str("4abc")
        await wait_closed(ws)


async def test_no_handshake_closes_the_connection(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await connect_raw(http, conformance_server) as ws:
        await wait_closed(ws)  # nobody answers the pings


async def test_disconnect_from_the_main_namespace(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await socketio_connection(http, conformance_server) as ws:
        await ws.send_str("41")
        assert await next_frame(ws) == "2"  # the Engine.IO connection lives on


async def test_connect_then_disconnect_a_custom_namespace(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await socketio_connection(http, conformance_server) as ws:
        await ws.send_str("40/custom")
        assert (await next_non_ping(ws)).startswith("40/custom,")
        assert await next_non_ping(ws) == '42/custom,["auth",{}]'
        await ws.send_str("41/custom")
        await ws.send_str('42["message","message to main namespace"]')
        assert await next_non_ping(ws) == '42["message-back","message to main namespace"]'


async def test_plain_message_and_ack(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with await socketio_connection(http, conformance_server) as ws:
        await ws.send_str('42["message",1,"2",{"3":[true]}]')
        assert await next_non_ping(ws) == '42["message-back",1,"2",{"3":[true]}]'
        await ws.send_str('42456["message-with-ack",1,"2",{"3":[false]}]')
        assert await next_non_ping(ws) == '43456[1,"2",{"3":[false]}]'


async def test_binary_message_and_ack(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    placeholders = '{"_placeholder":true,"num":0},{"_placeholder":true,"num":1}'
    async with await socketio_connection(http, conformance_server) as ws:
        await ws.send_str(f'452-["message",{placeholders}]')
        await ws.send_bytes(bytes([1, 2, 3]))
        await ws.send_bytes(bytes([4, 5, 6]))
        assert await next_non_ping(ws) == f'452-["message-back",{placeholders}]'
        assert await next_non_ping(ws) == bytes([1, 2, 3])
        assert await next_non_ping(ws) == bytes([4, 5, 6])
        await ws.send_str(f'452-789["message-with-ack",{placeholders}]')
        await ws.send_bytes(bytes([1, 2, 3]))
        await ws.send_bytes(bytes([4, 5, 6]))
        assert await next_non_ping(ws) == f"462-789[{placeholders}]"
        assert await next_non_ping(ws) == bytes([1, 2, 3])
        assert await next_non_ping(ws) == bytes([4, 5, 6])


@pytest.mark.parametrize("bad", ["4abc", "42{}", '42abc["message-with-ack",1,"2",{"3":[false]}]'])
async def test_invalid_packet_closes_the_connection(
    conformance_server: ServerProcess, http: aiohttp.ClientSession, bad: str
) -> None:
    async with await socketio_connection(http, conformance_server) as ws:
        await ws.send_str(bad)
        await wait_closed(ws)


# --- iofleet's guards on every namespace --------------------------------------


@pytest.fixture(scope="module")
def guarded_server() -> Iterator[ServerProcess]:
    """The same app behind JWT auth, with room for one Engine.IO connection."""
    env = {
        **CONFORMANCE_ENV,
        "IOFLEET_AUTH": "jwt",
        "IOFLEET_MAX_CONNECTIONS": "1",
        "IOFLEET_PING_INTERVAL": "5",
        "IOFLEET_PING_TIMEOUT": "5",
    }
    env.pop("IOFLEET_JWT_SECRET")
    server = ServerProcess("guarded", env=env)
    try:
        yield server.start()
    finally:
        server.stop()


def gauge(server: ServerProcess) -> float:
    with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    line = next(x for x in text.splitlines() if x.startswith("iofleet_connections "))
    return float(line.split()[1])


async def test_custom_namespace_is_guarded_and_counted_once(
    guarded_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    auth = json.dumps({"token": make_token("alice")}, separators=(",", ":"))
    async with await connect_raw(http, guarded_server) as ws:
        # JWT applies on a custom namespace too.
        await ws.send_str("40/custom,")
        assert await next_non_ping(ws) == '44/custom,{"message":"auth: token missing"}'
        # One Engine.IO connection on two namespaces is one connection: both fit
        # under MAX_CONNECTIONS=1, and the gauge says 1.
        await ws.send_str(f"40{auth}")
        assert (await next_non_ping(ws)).startswith("40{")
        assert await next_non_ping(ws) == f'42["auth",{auth}]'
        await ws.send_str(f"40/custom,{auth}")
        assert (await next_non_ping(ws)).startswith("40/custom,{")
        assert await next_non_ping(ws) == f'42/custom,["auth",{auth}]'
        assert gauge(guarded_server) == 1
        # A second Engine.IO connection is over capacity.
        async with await connect_raw(http, guarded_server) as other:
            await other.send_str(f"40{auth}")
            assert await next_non_ping(other) == '44{"message":"server at capacity"}'
        # Leaving one namespace keeps the connection; leaving both ends it.
        await ws.send_str("41/custom,")
        await ws.send_str('42456["message-with-ack","still here"]')
        assert await next_non_ping(ws) == '43456["still here"]'
        assert gauge(guarded_server) == 1
        await ws.send_str("41")
        for _ in range(50):
            if gauge(guarded_server) == 0:
                break
            await asyncio.sleep(0.05)
        assert gauge(guarded_server) == 0
    assert http_status(f"{guarded_server.admin_url}/healthz") == 200
