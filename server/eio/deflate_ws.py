"""aiohttp's WebSocket, for a client that negotiates permessage-deflate.

Only with `IOFLEET_WS_COMPRESSION` on, and only for a client that offers deflate;
every other WebSocket is served below aiohttp (`server.net.ws_transport`). aiohttp
deflates every frame once deflate is negotiated and has no public threshold, so
its writer's default is turned off and frames of `COMPRESS_THRESHOLD_BYTES` or
more are deflated per send. The aiohttp surface used beyond the public API (the
response's `_writer` with its `transport`, `_closing` and `compress`) is pinned in
tests/server/test_upstream_surface.py.
"""

from __future__ import annotations

import asyncio

from aiohttp import WSCloseCode, WSMsgType, web

from server.eio.socket import ENGINEIO_PACKET_TYPES, RejectHook

# permessage-deflate costs CPU per frame; below about 1 KB it saves little.
COMPRESS_THRESHOLD_BYTES = 1024


class DeflateWebSocket:
    """One deflating WebSocket: `receive` a message, `send` one, `close`."""

    __slots__ = ("_deflate_bits", "_max_bytes", "_on_refused", "_sid", "_ws")

    def __init__(self, max_bytes: int, on_refused: RejectHook, sid: str) -> None:
        self._ws = web.WebSocketResponse(max_msg_size=max_bytes, compress=True)
        self._max_bytes = max_bytes
        self._deflate_bits = 0
        self._on_refused = on_refused
        self._sid = sid

    @property
    def response(self) -> web.WebSocketResponse:
        return self._ws

    async def prepare(self, request: web.Request) -> None:
        ws = self._ws
        await ws.prepare(request)
        negotiated = ws.compress
        writer = getattr(ws, "_writer", None)
        if negotiated and writer is not None and hasattr(writer, "compress"):
            self._deflate_bits = 15 if negotiated is True else int(negotiated)
            writer.compress = 0

    async def send(self, message: str | bytes) -> None:
        compress = self._deflate_bits if len(message) >= COMPRESS_THRESHOLD_BYTES else None
        if isinstance(message, bytes):
            await self._ws.send_bytes(message, compress=compress)
        else:
            await self._ws.send_str(message, compress=compress)

    async def receive(self) -> str | bytes | None:
        """The next message; None when the WebSocket closed or broke the rules
        (an oversize or non-Engine.IO message is reported first)."""
        msg = await self._ws.receive()
        if msg.type is WSMsgType.ERROR:
            if getattr(msg.data, "code", None) == WSCloseCode.MESSAGE_TOO_BIG:
                self._on_refused("oversize", self._sid, f"message over {self._max_bytes} bytes")
            return None
        if msg.type is WSMsgType.TEXT:
            text: str = msg.data
            if not text or text[0] not in ENGINEIO_PACKET_TYPES:
                self._on_refused("malformed", self._sid, "not an Engine.IO packet")
                return None
            return text
        if msg.type is WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        return None

    async def close(self) -> None:
        await self._ws.close()

    # Ready-made broadcast frames (`server.sio.broadcast`) go past aiohttp's writer to
    # the transport: the frames are final and unmasked, as aiohttp would build them.

    def raw_transport(self) -> asyncio.Transport | None:
        """The WebSocket's transport, while frames may still be written to it."""
        writer = getattr(self._ws, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is None or transport.is_closing() or getattr(writer, "_closing", True):
            return None
        return transport  # type: ignore[no-any-return]

    def shared_frame_limit(self) -> float:
        """The largest ready-made frame this connection takes: any, unless it
        deflates large messages (its compressor keeps state across frames)."""
        return COMPRESS_THRESHOLD_BYTES - 1 if self._deflate_bits else float("inf")
