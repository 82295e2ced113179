"""Engine.IO v4 conformance, after the reference suite (socket.io-protocol
`test-suite/`, "Engine.IO protocol"), against a real server on loopback."""

from __future__ import annotations

import asyncio
import json

import aiohttp

from tests.server.conformance_support import (
    MAX_PAYLOAD,
    PING_INTERVAL_MS,
    PING_TIMEOUT_MS,
    conformance_server,
    eio_url,
    http,
    next_frame,
    open_polling,
    wait_closed,
    ws_url,
)
from tests.support.procs import ServerProcess

__all__ = ["conformance_server", "http"]  # fixtures used by name

HANDSHAKE_KEYS = {"sid", "upgrades", "pingInterval", "pingTimeout", "maxPayload"}
AFTER_PING_TIMEOUT_S = (PING_INTERVAL_MS + PING_TIMEOUT_MS) / 1000 + 0.05


def assert_handshake(value: dict[str, object], upgrades: list[str]) -> None:
    assert set(value) == HANDSHAKE_KEYS
    assert isinstance(value["sid"], str)
    assert value["upgrades"] == upgrades
    # python-engineio would announce int(0.3) * 1000 == 0 here.
    assert value["pingInterval"] == PING_INTERVAL_MS
    assert value["pingTimeout"] == PING_TIMEOUT_MS
    assert value["maxPayload"] == MAX_PAYLOAD


async def test_polling_handshake_opens_a_session(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.get(eio_url(conformance_server)) as response:
        assert response.status == 200
        content = await response.text()
    assert content.startswith("0")
    assert_handshake(json.loads(content[1:]), upgrades=["websocket"])


async def test_websocket_handshake_opens_a_session(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(ws_url(conformance_server), autoping=False) as ws:
        frame = await next_frame(ws)
        assert frame.startswith("0")
        assert_handshake(json.loads(frame[1:]), upgrades=[])


async def test_bad_eio_version_is_400(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    for query in ("transport=polling", "EIO=abc&transport=polling"):
        async with http.get(eio_url(conformance_server, query)) as response:
            assert response.status == 400, query


async def test_missing_or_unknown_transport_is_400(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    for query in ("EIO=4", "EIO=4&transport=abc"):
        async with http.get(eio_url(conformance_server, query)) as response:
            assert response.status == 400, query
        for headers in ({"Connection": "Upgrade", "Upgrade": "websocket"},):
            try:
                await http.ws_connect(ws_url(conformance_server, query), headers=headers)
            except aiohttp.WSServerHandshakeError as error:
                assert error.status == 400, query
            else:
                raise AssertionError(f"WebSocket opened with {query}")


async def test_unsupported_method_is_400_not_405(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    for method in ("POST", "PUT", "DELETE", "PATCH"):
        async with http.request(method, eio_url(conformance_server)) as response:
            assert response.status == 400, method


async def test_polling_ping_pong(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid = await open_polling(http, conformance_server)
    url = eio_url(conformance_server, f"EIO=4&transport=polling&sid={sid}")
    for _ in range(3):
        async with http.get(url) as response:
            assert response.status == 200
            assert await response.text() == "2"
        async with http.post(url, data="3") as response:
            assert response.status == 200


async def test_polling_session_is_gone_after_ping_timeout(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid = await open_polling(http, conformance_server)
    await asyncio.sleep(AFTER_PING_TIMEOUT_S)
    url = eio_url(conformance_server, f"EIO=4&transport=polling&sid={sid}")
    async with http.get(url) as response:
        assert response.status == 400


async def test_websocket_ping_pong_and_ping_timeout(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(ws_url(conformance_server), autoping=False) as ws:
        assert (await next_frame(ws)).startswith("0")
        for _ in range(3):
            assert await next_frame(ws) == "2"
            await ws.send_str("3")
        # No pong now: the server closes the socket after the ping timeout.
        assert await next_frame(ws) == "2"
        await wait_closed(ws)


async def test_polling_forced_close_ends_the_pending_poll_with_noop(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid = await open_polling(http, conformance_server)
    url = eio_url(conformance_server, f"EIO=4&transport=polling&sid={sid}")

    async def poll() -> tuple[int, str]:
        async with http.get(url) as response:
            return response.status, await response.text()

    pending = asyncio.create_task(poll())
    await asyncio.sleep(0.05)  # the GET is waiting on the server
    async with http.post(url, data="1") as response:
        assert response.status == 200
    assert await asyncio.wait_for(pending, 2) == (200, "6")
    async with http.get(url) as response:
        assert response.status == 400


async def test_websocket_forced_close(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    async with http.ws_connect(ws_url(conformance_server), autoping=False) as ws:
        assert (await next_frame(ws)).startswith("0")
        await ws.send_str("1")
        await wait_closed(ws)


async def upgrade(
    http: aiohttp.ClientSession, server: ServerProcess
) -> tuple[str, aiohttp.ClientWebSocketResponse]:
    sid = await open_polling(http, server)
    ws = await http.ws_connect(
        ws_url(server, f"EIO=4&transport=websocket&sid={sid}"), autoping=False
    )
    await ws.send_str("2probe")
    assert await next_frame(ws) == "3probe"
    await ws.send_str("5")
    return sid, ws


async def test_upgrade_then_polling_is_refused(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid, ws = await upgrade(http, conformance_server)
    url = eio_url(conformance_server, f"EIO=4&transport=polling&sid={sid}")
    async with http.get(url) as response:
        assert response.status == 400
    async with http.post(url, data="40") as response:
        assert response.status == 400
    await ws.close()


async def test_upgrade_then_a_second_websocket_is_closed(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid, ws = await upgrade(http, conformance_server)
    query = f"EIO=4&transport=websocket&sid={sid}"
    async with http.ws_connect(ws_url(conformance_server, query), autoping=False) as second:
        await wait_closed(second, timeout=2)
    # The upgraded socket is untouched.
    await ws.send_str("40")
    frame = await next_frame(ws)
    while frame in ("2", "6"):  # a ping, or the NOOP that ended the last poll
        frame = await next_frame(ws)
    assert frame.startswith("40{")
    await ws.close()


async def test_second_websocket_during_the_upgrade_is_closed(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    sid = await open_polling(http, conformance_server)
    query = f"EIO=4&transport=websocket&sid={sid}"
    first = await http.ws_connect(ws_url(conformance_server, query), autoping=False)
    async with http.ws_connect(ws_url(conformance_server, query), autoping=False) as second:
        await wait_closed(second, timeout=2)
    await first.close()


async def test_poll_right_behind_the_upgrade_packets_is_refused(
    conformance_server: ServerProcess, http: aiohttp.ClientSession
) -> None:
    """As the reference suite does it: probe, upgrade and poll without waiting for
    the server in between, the poll on a connection that is already open, so the
    server reads the upgrade's packets and the poll in one pass."""
    refused = 0
    for _ in range(10):
        sid = await open_polling(http, conformance_server)
        reader, writer = await asyncio.open_connection("127.0.0.1", conformance_server.port)
        poll = (
            f"GET /socket.io/?EIO=4&transport=polling&sid={sid} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        ).encode()
        query = f"EIO=4&transport=websocket&sid={sid}"
        async with http.ws_connect(ws_url(conformance_server, query), autoping=False) as ws:
            await ws.send_str("2probe")
            await ws.send_str("5")
            writer.write(poll)
            status_line = await asyncio.wait_for(reader.readline(), 3)
            refused += b" 400 " in status_line
        writer.close()
    assert refused == 10
