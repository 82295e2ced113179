"""Short-lived Engine.IO / Socket.IO connections of every kind churn produces.

Each kind opens one connection, goes as far as its name says, and ends it the way
real clients do: with a WebSocket close frame, with an Engine.IO CLOSE packet over
polling, or by vanishing (the TCP connection dropped without a close frame, or a
pending long-poll abandoned). Raw protocol on purpose: a stock client costs more
CPU than the server it tests, and none of them can vanish on request.
`tests/server/test_release.py` and `bench/churn_bench.py` drive the same kinds.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp

PATH = "/socket.io/"
# How long a vanishing polling client lets its long-poll hang before dropping it.
ABANDON_POLL_AFTER_SECONDS = 0.2


class Endpoint:
    """One server's Socket.IO URL and what a client sends with CONNECT."""

    def __init__(self, base_url: str, auth: dict[str, Any] | None = None) -> None:
        self.base_url = base_url.rstrip("/")
        self.auth = auth

    def polling(self, sid: str | None = None) -> str:
        url = f"{self.base_url}{PATH}?EIO=4&transport=polling"
        return url if sid is None else f"{url}&sid={sid}"

    def websocket(self, sid: str | None = None) -> str:
        url = self.base_url.replace("http", "ws", 1) + f"{PATH}?EIO=4&transport=websocket"
        return url if sid is None else f"{url}&sid={sid}"

    def connect_packet(self) -> str:
        return "40" + (json.dumps(self.auth) if self.auth else "")


def _open_payload(text: str) -> str:
    """The sid from an Engine.IO OPEN packet (the first packet of a polling payload)."""
    first = text.split("\x1e", 1)[0]
    if not first.startswith("0{"):
        raise ConnectionError(f"not an OPEN packet: {first[:80]!r}")
    return str(json.loads(first[1:])["sid"])


async def _ws_connect(session: aiohttp.ClientSession, url: str) -> aiohttp.ClientWebSocketResponse:
    return await session.ws_connect(url, autoping=False, max_msg_size=0, autoclose=False)


async def _ws_until(ws: aiohttp.ClientWebSocketResponse, prefix: str) -> str:
    """Read frames until one starts with `prefix` (pings are answered on the way)."""
    while True:
        text = await ws.receive_str()
        if text == "2":
            await ws.send_str("3")
        elif text.startswith("44"):
            raise ConnectionError(f"connect refused: {text}")
        elif text.startswith(prefix):
            return text


def _drop(ws: aiohttp.ClientWebSocketResponse) -> None:
    """End the TCP connection at once, with no WebSocket close frame (a lost client)."""
    sock = ws.get_extra_info("socket")
    if isinstance(sock, socket.socket):
        # SO_LINGER 0: the kernel sends RST, as when a phone drops off the network.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.shutdown(socket.SHUT_RDWR)


async def ws_open_close(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """WebSocket handshake (Engine.IO OPEN), then a close frame."""
    ws = await _ws_connect(session, endpoint.websocket())
    await _ws_until(ws, "0{")
    await ws.close()


async def ws_connect_close(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """WebSocket handshake and Socket.IO CONNECT, then a close frame."""
    ws = await _ws_connect(session, endpoint.websocket())
    await _ws_until(ws, "0{")
    await ws.send_str(endpoint.connect_packet())
    await _ws_until(ws, "40")
    await ws.close()


async def ws_connect_vanish(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """WebSocket handshake and CONNECT, then the TCP connection drops (no close frame)."""
    ws = await _ws_connect(session, endpoint.websocket())
    await _ws_until(ws, "0{")
    await ws.send_str(endpoint.connect_packet())
    await _ws_until(ws, "40")
    _drop(ws)
    with contextlib.suppress(Exception):
        await ws.close()


async def _poll_handshake(session: aiohttp.ClientSession, endpoint: Endpoint) -> str:
    async with session.get(endpoint.polling()) as response:
        response.raise_for_status()
        return _open_payload(await response.text())


async def _post(session: aiohttp.ClientSession, endpoint: Endpoint, sid: str, body: str) -> None:
    async with session.post(endpoint.polling(sid), data=body.encode()) as response:
        response.raise_for_status()
        await response.read()


async def _poll_connect(session: aiohttp.ClientSession, endpoint: Endpoint) -> str:
    sid = await _poll_handshake(session, endpoint)
    await _post(session, endpoint, sid, endpoint.connect_packet())
    async with session.get(endpoint.polling(sid)) as response:
        response.raise_for_status()
        text = await response.text()
    if not text.startswith("40"):
        raise ConnectionError(f"connect refused: {text[:80]}")
    return sid


async def poll_open_close(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """Polling handshake, then an Engine.IO CLOSE packet."""
    sid = await _poll_handshake(session, endpoint)
    await _post(session, endpoint, sid, "1")


async def poll_connect_close(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """Polling handshake and CONNECT, then CLOSE while a long-poll is pending (as stock
    clients do: the pending GET must be answered, not left to its timeout)."""
    sid = await _poll_connect(session, endpoint)
    pending = asyncio.ensure_future(session.get(endpoint.polling(sid)))
    await asyncio.sleep(0.05)
    await _post(session, endpoint, sid, "1")
    with contextlib.suppress(Exception):
        async with await asyncio.wait_for(pending, 10) as response:
            await response.read()


async def poll_connect_vanish(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """Polling handshake and CONNECT, then a long-poll whose TCP connection is dropped."""
    sid = await _poll_connect(session, endpoint)
    with contextlib.suppress(TimeoutError):
        # Cancelling the request closes its connection: the server sees the client go.
        async with await asyncio.wait_for(
            session.get(endpoint.polling(sid)), ABANDON_POLL_AFTER_SECONDS
        ) as response:
            await response.read()


async def upgrade_close(session: aiohttp.ClientSession, endpoint: Endpoint) -> None:
    """Polling handshake and CONNECT, upgrade to WebSocket, then a close frame."""
    sid = await _poll_connect(session, endpoint)
    ws = await _ws_connect(session, endpoint.websocket(sid))
    await ws.send_str("2probe")
    await _ws_until(ws, "3probe")
    await ws.send_str("5")
    await ws.close()


KindFn = Callable[[aiohttp.ClientSession, Endpoint], Awaitable[None]]
KINDS: dict[str, KindFn] = {
    "ws_open_close": ws_open_close,
    "ws_connect_close": ws_connect_close,
    "ws_connect_vanish": ws_connect_vanish,
    "poll_open_close": poll_open_close,
    "poll_connect_close": poll_connect_close,
    "poll_connect_vanish": poll_connect_vanish,
    "upgrade_close": upgrade_close,
}


async def storm(
    endpoint: Endpoint,
    kinds: list[str],
    count: int,
    concurrency: int = 50,
    on_done: Callable[[], None] | None = None,
    timeout: float = 600,
) -> int:
    """`count` connections cycling through `kinds`, `concurrency` at a time; returns
    how many failed (each failure is one connection the server refused or broke)."""
    connector = aiohttp.TCPConnector(limit=0, force_close=True)
    failures = 0
    semaphore = asyncio.Semaphore(concurrency)

    async with aiohttp.ClientSession(connector=connector) as session:

        async def one(i: int) -> None:
            nonlocal failures
            async with semaphore:
                try:
                    await asyncio.wait_for(KINDS[kinds[i % len(kinds)]](session, endpoint), 30)
                except (aiohttp.ClientError, ConnectionError, OSError, TimeoutError):
                    failures += 1
                if on_done is not None:
                    on_done()

        await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(count))), timeout)
    return failures
