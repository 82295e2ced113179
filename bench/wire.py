"""A minimal Socket.IO-over-WebSocket client for load generation.

Stock clients cost more CPU than the servers they test; this one speaks just
enough of Engine.IO v4 / Socket.IO v5 (open, connect, ping/pong, events, acks)
to hold thousands of connections from one process.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import aiohttp


class WireClient:
    def __init__(self, session: aiohttp.ClientSession, url: str) -> None:
        self.session = session
        self.url = url.replace("http://", "ws://") + "/socket.io/?EIO=4&transport=websocket"
        self.ws: aiohttp.ClientWebSocketResponse | None = None
        self.received: dict[str, int] = {}
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self._next_ack = 0
        self._reader: asyncio.Task[None] | None = None
        self.counting: str | None = None
        self.count_target = 0
        self.reached = asyncio.Event()

    async def connect(self, auth: dict[str, Any] | None = None) -> None:
        self.ws = await self.session.ws_connect(self.url, autoping=False, max_msg_size=0)
        opening = await self.ws.receive_str()
        assert opening.startswith("0{"), opening
        await self.ws.send_str("40" + (json.dumps(auth) if auth else ""))
        while True:
            reply = await self.ws.receive_str()
            if reply.startswith("40"):
                break
            if reply.startswith("44"):
                raise ConnectionError(reply)
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        assert self.ws is not None
        async for message in self.ws:
            if message.type is not aiohttp.WSMsgType.TEXT:
                break
            data: str = message.data
            if data == "2":
                await self.ws.send_str("3")
            elif data.startswith("42"):
                event = data[4 : data.index('"', 4)]
                count = self.received.get(event, 0) + 1
                self.received[event] = count
                if event == self.counting and count >= self.count_target:
                    self.reached.set()
            elif data.startswith("43"):
                bracket = data.index("[")
                future = self.acks.pop(int(data[2:bracket]), None)
                if future is not None and not future.done():
                    future.set_result(json.loads(data[bracket:]))

    def expect(self, event: str, count: int) -> None:
        self.counting = event
        self.count_target = count + self.received.get(event, 0)
        self.reached.clear()

    async def emit(self, event: str, data: Any, ack: bool = False) -> Any:
        assert self.ws is not None
        if not ack:
            await self.ws.send_str("42" + json.dumps([event, data]))
            return None
        self._next_ack += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self._next_ack] = future
        await self.ws.send_str(f"42{self._next_ack}" + json.dumps([event, data]))
        return await future

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()
        if self._reader is not None:
            self._reader.cancel()
