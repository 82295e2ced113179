"""A server hosting the protocol test suite's app, and a raw Engine.IO/Socket.IO
peer to talk to it frame by frame (socket.io-protocol `test-suite/`, Engine.IO v4
and Socket.IO v5 protocol documents)."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest

from tests.support.procs import ServerProcess

PING_INTERVAL_MS = 300
PING_TIMEOUT_MS = 200
MAX_PAYLOAD = 1_000_000
CONFORMANCE_ENV = {
    "IOFLEET_AUTH": "none",
    "IOFLEET_JWT_SECRET": "",
    "IOFLEET_HANDLERS": "tests.server.conformance_app:register",
    "IOFLEET_PING_INTERVAL": str(PING_INTERVAL_MS / 1000),
    "IOFLEET_PING_TIMEOUT": str(PING_TIMEOUT_MS / 1000),
    "IOFLEET_MAX_MESSAGE_BYTES": str(MAX_PAYLOAD),
}


@pytest.fixture(scope="module")
def conformance_server() -> Iterator[ServerProcess]:
    server = ServerProcess("conformance", env=dict(CONFORMANCE_ENV))
    try:
        yield server.start()
    finally:
        server.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def eio_url(server: ServerProcess, query: str = "EIO=4&transport=polling") -> str:
    return f"{server.url}/socket.io/?{query}"


def ws_url(server: ServerProcess, query: str = "EIO=4&transport=websocket") -> str:
    return eio_url(server, query).replace("http://", "ws://")


async def open_polling(http: aiohttp.ClientSession, server: ServerProcess) -> str:
    async with http.get(eio_url(server)) as response:
        assert response.status == 200
        text = await response.text()
    return str(json.loads(text[1:])["sid"])


async def next_frame(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3) -> Any:
    """The next data frame (str or bytes), skipping nothing; None once closed."""
    message = await ws.receive(timeout=timeout)
    if message.type in (aiohttp.WSMsgType.TEXT, aiohttp.WSMsgType.BINARY):
        return message.data
    return None


async def next_non_ping(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3) -> Any:
    while True:
        frame = await next_frame(ws, timeout)
        if frame != "2":
            return frame


async def wait_closed(ws: aiohttp.ClientWebSocketResponse, timeout: float = 3) -> None:
    """Read until the server closes the WebSocket; fail if it does not."""
    for _ in range(100):
        if await next_frame(ws, timeout) is None:
            return
    raise AssertionError("the server kept the WebSocket open")


async def socketio_connection(
    http: aiohttp.ClientSession, server: ServerProcess
) -> aiohttp.ClientWebSocketResponse:
    """A WebSocket connected to `/` (handshake, CONNECT and the app's `auth` read)."""
    ws = await http.ws_connect(ws_url(server), autoping=False)
    assert (await next_frame(ws)).startswith("0{")
    await ws.send_str("40")
    assert (await next_frame(ws)).startswith("40{")
    assert await next_frame(ws) == '42["auth",{}]'
    return ws
