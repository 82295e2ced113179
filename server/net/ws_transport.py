"""WebSocket connections served below aiohttp once the handshake is done.

aiohttp serves a WebSocket with its request-handler task (and the chain of
coroutines above it) parked for the connection's whole life, plus a reader, a
message queue and a writer: about 10 KiB per idle connection, and every message
wakes that task through the queue. iofleet answers the upgrade itself (RFC 6455
4.2.2: a 101 with `Sec-WebSocket-Accept`), then moves the TCP transport from
aiohttp's protocol to a `WebSocketConnection`: frames are parsed in
`data_received` and handed to the Engine.IO socket (a `WebSocketEndpoint`) as
calls; frames out are bytes written to the transport. An idle connection holds
no task and no queue.

Only connections that do not use permessage-deflate come here (the Node server's
default too: `perMessageDeflate: false`); with `IOFLEET_WS_COMPRESSION` on, a
client that offers deflate keeps aiohttp's WebSocket (`server.eio.engine`).

The aiohttp surface this relies on (pinned in tests/server/test_upstream_surface.py,
tested with aiohttp 3.14): the request's `protocol`, whose `transport` is cleared so
aiohttp writes nothing more to the socket and whose `connection_lost` is called so
aiohttp's server forgets the connection; and `aiohttp._websocket.helpers.websocket_mask`,
its compiled unmasking.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import hashlib
from collections.abc import Mapping
from typing import Any, Protocol

from aiohttp import web
from aiohttp._websocket.helpers import websocket_mask

# RFC 6455 1.3: the key's digest is taken with this GUID appended.
HANDSHAKE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# After the server's close frame, how long the client gets to answer with its own
# before the TCP connection is dropped.
CLOSE_HANDSHAKE_SECONDS = 1.0

OP_CONTINUATION = 0x0
OP_TEXT = 0x1
OP_BINARY = 0x2
OP_CLOSE = 0x8
OP_PING = 0x9
OP_PONG = 0xA

CLOSE_NORMAL = 1000
CLOSE_PROTOCOL_ERROR = 1002
CLOSE_INVALID_DATA = 1007
CLOSE_POLICY_VIOLATION = 1008
CLOSE_MESSAGE_TOO_BIG = 1009


def frame(opcode: int, payload: bytes) -> bytes:
    """A final, unmasked frame (servers never mask, RFC 6455 5.1) holding `payload`."""
    size = len(payload)
    first = 0x80 | opcode
    if size < 126:
        header = bytes((first, size))
    elif size < 65536:
        header = bytes((first, 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((first, 127)) + size.to_bytes(8, "big")
    return header + payload


def text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame holding `payload` (UTF-8)."""
    return frame(OP_TEXT, payload)


def close_frame(code: int, reason: str = "") -> bytes:
    return frame(OP_CLOSE, code.to_bytes(2, "big") + reason.encode()[:123])


def handshake_problem(environ: Mapping[str, Any]) -> str | None:
    """Why the request in `environ` (WSGI keys) is not a WebSocket opening
    handshake we accept, or None."""
    if environ.get("REQUEST_METHOD") != "GET":
        return "WebSocket handshake must be a GET"
    if "websocket" not in environ.get("HTTP_UPGRADE", "").lower():
        return "missing Upgrade: websocket"
    # A token of the field, as python-engineio reads it too.
    tokens = [token.strip() for token in environ.get("HTTP_CONNECTION", "").lower().split(",")]
    if "upgrade" not in tokens:
        return "missing Connection: upgrade"
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "") != "13":
        return "unsupported Sec-WebSocket-Version"
    try:
        key = base64.b64decode(environ.get("HTTP_SEC_WEBSOCKET_KEY", ""), validate=True)
    except binascii.Error:
        return "malformed Sec-WebSocket-Key"
    if len(key) != 16:
        return "malformed Sec-WebSocket-Key"
    return None


def switching_protocols(key: str) -> bytes:
    """The 101 response that completes the handshake for `Sec-WebSocket-Key: key`."""
    accept = base64.b64encode(hashlib.sha1(key.encode() + HANDSHAKE_GUID).digest())
    return (
        b"HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Accept: " + accept + b"\r\n\r\n"
    )


class DetachedResponse(web.StreamResponse):
    """What the request handler returns once `WebSocketConnection.take_over` has
    the transport: aiohttp prepares and ends it, and it writes nothing (aiohttp
    has no transport left to write to; building the headers would be wasted)."""

    async def prepare(self, request: web.BaseRequest) -> None:
        return None

    async def write_eof(self, data: bytes = b"") -> None:
        return None


class WebSocketEndpoint(Protocol):
    """What a `WebSocketConnection` tells its owner (the Engine.IO socket)."""

    def ws_message(self, data: str | bytes) -> None:
        """A whole text (str) or binary (bytes) message arrived."""

    def ws_refused(self, reason: str, detail: str) -> None:
        """The client broke the rules (`reason`: oversize or malformed); the
        connection is being closed."""

    def ws_writable(self) -> None:
        """The transport's buffer drained below its low-water mark."""

    def ws_lost(self) -> None:
        """The TCP connection is gone (after a close handshake or not)."""


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket after the handshake: frames in, calls out; bytes out."""

    __slots__ = (
        "_close_timer",
        "_closing",
        "_endpoint",
        "_fragment_opcode",
        "_fragments",
        "_max_message_bytes",
        "_tail",
        "transport",
        "write_paused",
    )

    def __init__(
        self, transport: asyncio.Transport, endpoint: WebSocketEndpoint, max_message_bytes: int
    ) -> None:
        self.transport: asyncio.Transport | None = transport
        self._endpoint = endpoint
        self._max_message_bytes = max_message_bytes
        self._tail = b""  # bytes of a frame not complete yet
        self._fragments: bytearray | None = None  # a fragmented message so far
        self._fragment_opcode = 0
        self._closing = False  # our close frame went out (or the peer's came in)
        self._close_timer: asyncio.TimerHandle | None = None
        self.write_paused = False  # the transport asked us to stop writing

    @classmethod
    def adopt(
        cls,
        transport: asyncio.Transport | None,
        endpoint: WebSocketEndpoint,
        max_message_bytes: int,
    ) -> WebSocketConnection | None:
        """Serve WebSocket frames on `transport` from now on (the caller writes the
        101, `switching_protocols`, before anything else); None when the client
        is already gone."""
        if transport is None or transport.is_closing():
            return None
        connection = cls(transport, endpoint, max_message_bytes)
        transport.set_protocol(connection)
        return connection

    @classmethod
    def take_over(
        cls, request: web.Request, endpoint: WebSocketEndpoint, max_message_bytes: int
    ) -> WebSocketConnection | None:
        """`adopt` `request`'s transport, taking it from aiohttp.

        None when the client is already gone. aiohttp's request handler then
        finds no transport (its response is never written) and ends.
        """
        http = request.protocol
        connection = cls.adopt(request.transport, endpoint, max_message_bytes)
        if connection is not None:
            http.transport = None  # aiohttp writes nothing more, and closes nothing
            http.connection_lost(None)  # and its server forgets the connection
        return connection

    # --- writing ---------------------------------------------------------------

    def raw_transport(self) -> asyncio.Transport | None:
        """The transport, while frames may still be written to it."""
        transport = self.transport
        if transport is None or self._closing or transport.is_closing():
            return None
        return transport

    def shared_frame_limit(self) -> float:
        """Every ready-made frame may be written as is (no per-connection deflate)."""
        return float("inf")

    def write(self, data: bytes) -> None:
        transport = self.raw_transport()
        if transport is not None:
            transport.write(data)

    def close(self, code: int = CLOSE_NORMAL, reason: str = "") -> None:
        """Start the close handshake: our close frame, then the client's, then
        the TCP close (or the drop, after `CLOSE_HANDSHAKE_SECONDS`)."""
        transport = self.transport
        if self._closing or transport is None or transport.is_closing():
            return
        self._closing = True
        transport.write(close_frame(code, reason))
        self._close_timer = asyncio.get_running_loop().call_later(
            CLOSE_HANDSHAKE_SECONDS, transport.abort
        )

    def abort(self) -> None:
        if self.transport is not None:
            self.transport.abort()

    # --- asyncio.Protocol ------------------------------------------------------

    def pause_writing(self) -> None:
        self.write_paused = True

    def resume_writing(self) -> None:
        self.write_paused = False
        self._endpoint.ws_writable()

    def eof_received(self) -> bool:
        return False  # the transport closes; `connection_lost` follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.transport = None
        self._tail = b""
        self._fragments = None
        self._endpoint.ws_lost()

    def data_received(self, data: bytes) -> None:
        """Parse every whole frame in `data` (and what was left from before)."""
        if self._tail:
            data = self._tail + data
            self._tail = b""
        end = len(data)
        pos = 0
        while end - pos >= 2 and self.transport is not None:
            first, second = data[pos], data[pos + 1]
            if first & 0x70 or not second & 0x80:
                detail = "reserved bits set" if first & 0x70 else "unmasked client frame"
                self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", detail)
                return
            size = second & 0x7F
            head = pos + 2
            if size == 126:
                if end - head < 2:
                    break
                size = int.from_bytes(data[head : head + 2], "big")
                head += 2
            elif size == 127:
                if end - head < 8:
                    break
                size = int.from_bytes(data[head : head + 8], "big")
                head += 8
            so_far = 0 if self._fragments is None else len(self._fragments)
            if size + so_far > self._max_message_bytes:
                detail = f"message over {self._max_message_bytes} bytes"
                self.refuse(CLOSE_MESSAGE_TOO_BIG, "oversize", detail)
                return
            if end - head < 4 + size:
                break
            payload = bytearray(data[head + 4 : head + 4 + size])
            if size:
                websocket_mask(data[head : head + 4], payload)
            pos = head + 4 + size
            self._frame(first & 0x80, first & 0x0F, payload)
        if pos < end and self.transport is not None:
            self._tail = data[pos:]

    # --- frames ------------------------------------------------------------------

    def _frame(self, fin: int, opcode: int, payload: bytearray) -> None:
        if opcode >= OP_CLOSE:
            self._control(fin, opcode, payload)
            return
        if self._closing:
            return  # our close frame is out: what the client still sends is not read
        if opcode == OP_CONTINUATION:
            if self._fragments is None:
                self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", "continuation of nothing")
                return
            self._fragments += payload
            if fin:
                whole, self._fragments = self._fragments, None
                self._message(self._fragment_opcode, whole)
            return
        if opcode not in (OP_TEXT, OP_BINARY) or self._fragments is not None:
            self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", f"unexpected opcode {opcode}")
            return
        if not fin:
            self._fragments = payload
            self._fragment_opcode = opcode
            return
        self._message(opcode, payload)

    def _message(self, opcode: int, payload: bytes | bytearray) -> None:
        if opcode == OP_BINARY:
            self._endpoint.ws_message(bytes(payload))
            return
        try:
            text = payload.decode()
        except UnicodeDecodeError:
            self.refuse(CLOSE_INVALID_DATA, "malformed", "text frame is not UTF-8")
            return
        self._endpoint.ws_message(text)

    def _control(self, fin: int, opcode: int, payload: bytearray) -> None:
        if not fin or len(payload) > 125:
            self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", "fragmented or long control frame")
            return
        if opcode == OP_PING:
            self.write(frame(OP_PONG, bytes(payload)))
        elif opcode == OP_CLOSE:
            transport = self.transport
            if transport is None:
                return
            if not self._closing:  # the client's close: answer it with its code
                self._closing = True
                code = int.from_bytes(payload[:2], "big") if len(payload) >= 2 else CLOSE_NORMAL
                transport.write(close_frame(code))
            transport.close()  # flushes what is written, then closes
        elif opcode != OP_PONG:
            self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", f"unknown control opcode {opcode}")

    def refuse(self, code: int, reason: str, detail: str) -> None:
        """The client broke the protocol: tell the owner once, close with `code`."""
        if self._closing or self.transport is None:
            return
        self._tail = b""
        self._fragments = None
        transport = self.transport
        self._endpoint.ws_refused(reason, detail)
        self.close(code, detail)
        transport.close()  # what was read is dropped; the close frame still goes out


def is_deflate_offered(environ: Mapping[str, Any]) -> bool:
    return "permessage-deflate" in environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
