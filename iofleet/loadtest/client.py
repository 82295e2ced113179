"""A lean Socket.IO v5 client over one aiohttp WebSocket (Engine.IO v4), for load.

A full python-socketio client per virtual user costs several tasks, timers and
its own HTTP session; a load generator needs only the default namespace over
WebSocket, text packets, acks and ping replies. One `aiohttp.ClientSession` is
shared by every connection, and each connection owns exactly one reader task
(`close` and an ended reader release everything the connection started).

Packets (Engine.IO type digit, then Socket.IO type digit):
`0{...}` open, `2`/`3` ping/pong, `40{auth}` connect, `40{sid}` connected,
`44{message}` connect error, `42[event, ...]` event, `42<id>[...]` event with ack,
`43<id>[...]` ack, `41` disconnect.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable
from typing import Any

import aiohttp
import orjson

from iofleet.loadtest.stats import ErrorKind


class ConnectFailed(Exception):
    def __init__(self, kind: ErrorKind, reason: str) -> None:
        super().__init__(reason)
        self.kind: ErrorKind = kind
        self.reason = reason


class AckTimeout(Exception):
    pass


class NotConnected(Exception):
    pass


def socket_url(target: str) -> str:
    base = target.rstrip("/")
    if base.startswith("http"):
        base = "ws" + base[len("http") :]
    return f"{base}/socket.io/?EIO=4&transport=websocket"


EventHandler = Callable[[str, list[Any]], None]
CloseHandler = Callable[[str], None]


class SioConnection:
    """One Socket.IO connection. `on_event(name, args)` runs for every server event;
    `on_lost(reason)` once if the connection ends without `close()`."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        url: str,
        on_event: EventHandler,
        on_lost: CloseHandler,
    ) -> None:
        self._session = session
        self._url = url
        self._on_event = on_event
        self._on_lost = on_lost
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._reader: asyncio.Task[None] | None = None
        self._acks: dict[int, asyncio.Future[list[Any]]] = {}
        self._next_ack = 0
        self._closing = False

    @property
    def open(self) -> bool:
        return self._ws is not None and not self._ws.closed and not self._closing

    async def connect(self, auth: dict[str, Any] | None, timeout: float) -> None:
        try:
            async with asyncio.timeout(timeout):
                await self._handshake(auth)
        except TimeoutError:
            await self._abort()
            raise ConnectFailed("timeout", "connect timed out") from None
        except aiohttp.WSServerHandshakeError as error:
            await self._abort()
            raise ConnectFailed("refused", f"HTTP {error.status}") from None
        except (aiohttp.ClientError, OSError) as error:
            await self._abort()
            raise ConnectFailed("refused", type(error).__name__) from None
        except ConnectFailed:
            await self._abort()
            raise
        self._reader = asyncio.create_task(self._read())

    async def _handshake(self, auth: dict[str, Any] | None) -> None:
        # autoping off: Engine.IO pings are text packets answered below.
        self._ws = ws = await self._session.ws_connect(self._url, autoping=False, max_msg_size=0)
        opened = await ws.receive()
        if opened.type != aiohttp.WSMsgType.TEXT or not opened.data.startswith("0"):
            raise ConnectFailed("refused", "no Engine.IO open packet")
        await ws.send_str("40" + (orjson.dumps(auth).decode() if auth else ""))
        while True:
            reply = await ws.receive()
            if reply.type != aiohttp.WSMsgType.TEXT:
                raise ConnectFailed("refused", f"closed during connect ({reply.type.name})")
            data: str = reply.data
            if data == "2":
                await ws.send_str("3")
            elif data.startswith("40"):
                return
            elif data.startswith("44"):
                message = orjson.loads(data[2:]).get("message", "") if len(data) > 2 else ""
                raise ConnectFailed("refused", str(message))

    async def _read(self) -> None:
        ws = self._ws
        assert ws is not None
        reason = "transport close"
        try:
            async for message in ws:
                if message.type != aiohttp.WSMsgType.TEXT:
                    continue
                data: str = message.data
                kind = data[:2]
                if kind == "42":
                    self._event(data)
                elif data == "2":
                    await ws.send_str("3")
                elif kind == "43":
                    self._ack(data)
                elif kind == "41" or data == "1":
                    reason = "server disconnect"
                    break
        except (aiohttp.ClientError, OSError) as error:
            reason = type(error).__name__
        finally:
            for future in self._acks.values():
                if not future.done():
                    future.set_exception(NotConnected(reason))
            self._acks.clear()
            if not self._closing:
                self._closing = True
                await ws.close()
                self._on_lost(reason)

    def _event(self, data: str) -> None:
        body = data.find("[")
        if body < 0:
            return
        packet = orjson.loads(data[body:])
        if packet and isinstance(packet[0], str):
            self._on_event(packet[0], packet[1:])

    def _ack(self, data: str) -> None:
        body = data.find("[")
        if body < 2:
            return
        future = self._acks.pop(int(data[2:body]), None)
        if future is not None and not future.done():
            future.set_result(orjson.loads(data[body:]))

    async def emit(self, event: str, data: Any, ack: bool = False, timeout: float = 10) -> Any:
        """Send an event; with `ack`, wait for the server's answer (its first argument)."""
        ws = self._ws
        if ws is None or not self.open:
            raise NotConnected("not connected")
        payload = orjson.dumps([event] if data is None else [event, data]).decode()
        if not ack:
            await ws.send_str("42" + payload)
            return None
        self._next_ack += 1
        ack_id = self._next_ack
        future: asyncio.Future[list[Any]] = asyncio.get_running_loop().create_future()
        self._acks[ack_id] = future
        try:
            await ws.send_str(f"42{ack_id}{payload}")
            async with asyncio.timeout(timeout):
                args = await future
        except TimeoutError:
            raise AckTimeout(event) from None
        except (aiohttp.ClientError, ConnectionResetError) as error:
            raise NotConnected(type(error).__name__) from None
        finally:
            self._acks.pop(ack_id, None)
        return args[0] if args else None

    async def close(self) -> None:
        """Disconnect on purpose (not counted as lost)."""
        if self._closing:
            return
        self._closing = True
        ws = self._ws
        if ws is not None and not ws.closed:
            with contextlib.suppress(aiohttp.ClientError, ConnectionResetError):
                await ws.send_str("41")
            await ws.close()
        if self._reader is not None:
            await self._reader

    async def _abort(self) -> None:
        self._closing = True
        if self._ws is not None:
            await self._ws.close()
