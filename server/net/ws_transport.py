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
client that offers deflate keeps aiohttp's WebSocket (`server.eio.deflate_ws`).

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
from typing import Any, NamedTuple, Protocol

from aiohttp import web
from aiohttp._websocket.helpers import websocket_mask

# RFC 6455 1.3: the key's digest is taken with this GUID appended.
HANDSHAKE_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
# After the server's close frame, how long the client gets to answer with its own
# before the TCP connection is dropped.
CLOSE_HANDSHAKE_SECONDS = 1.0
# The protocol version spoken (RFC 6455 4.1); a refusal names it (4.4).
WEBSOCKET_VERSION = "13"
# RFC 6455 5.5: control frames carry at most this many payload bytes.
MAX_CONTROL_PAYLOAD = 125

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
# RFC 6455 7.4.1 and the IANA registry: the codes an endpoint may put in a close
# frame (1004-1006 and 1015 are reserved or only reported locally), plus 3000-4999.
SENDABLE_CLOSE_CODES = frozenset(
    {1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 1012, 1013, 1014}
)


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
    """A close frame with `code` and as much of `reason` as fits (whole UTF-8
    characters: the 125-byte control limit less the code's two)."""
    text = reason.encode()[: MAX_CONTROL_PAYLOAD - 2].decode(errors="ignore").encode()
    return frame(OP_CLOSE, code.to_bytes(2, "big") + text)


class HandshakeRefusal(NamedTuple):
    """Why an opening handshake is refused, and with which status."""

    status: int  # 400, or 426 for a version this server does not speak (RFC 6455 4.4)
    reason: str


def handshake_refusal(environ: Mapping[str, Any]) -> HandshakeRefusal | None:
    """Why the request in `environ` (WSGI keys) is not a WebSocket opening
    handshake we accept, or None. The one owner of the rule, for connects read
    before aiohttp and through it alike (`IofleetEngine` asks it before it
    registers a session). `Upgrade` must be exactly `websocket` (any case; a
    repeated field is joined with commas, so two fields fail)."""
    if environ.get("REQUEST_METHOD") != "GET":
        return HandshakeRefusal(400, "WebSocket handshake must be a GET")
    if environ.get("HTTP_UPGRADE", "").lower() != "websocket":
        return HandshakeRefusal(400, "Invalid websocket upgrade")
    # A token of the field.
    tokens = [token.strip() for token in environ.get("HTTP_CONNECTION", "").lower().split(",")]
    if "upgrade" not in tokens:
        return HandshakeRefusal(400, "missing Connection: upgrade")
    if environ.get("HTTP_SEC_WEBSOCKET_VERSION", "") != WEBSOCKET_VERSION:
        return HandshakeRefusal(426, "unsupported Sec-WebSocket-Version")
    try:
        key = base64.b64decode(environ.get("HTTP_SEC_WEBSOCKET_KEY", ""), validate=True)
    except binascii.Error:
        return HandshakeRefusal(400, "malformed Sec-WebSocket-Key")
    if len(key) != 16:
        return HandshakeRefusal(400, "malformed Sec-WebSocket-Key")
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

    def ws_writable(self, conn: WebSocketConnection) -> None:
        """`conn`'s transport buffer drained below its low-water mark."""

    def ws_lost(self, conn: WebSocketConnection) -> None:
        """`conn`'s TCP connection is gone (after a close handshake or not). Named,
        because an endpoint may have tried one connection (a failed upgrade) before
        the one it uses: the old one's end must not end the new one."""


class WebSocketConnection(asyncio.Protocol):
    """One WebSocket after the handshake: frames in, calls out; bytes out."""

    __slots__ = (
        "_close_timer",
        "_closing",
        "_early",
        "_endpoint",
        "_fragment_opcode",
        "_fragments",
        "_max_message_bytes",
        "_pong",
        "_tail",
        "_tail_need",
        "transport",
        "write_paused",
    )

    def __init__(
        self, transport: asyncio.Transport, endpoint: WebSocketEndpoint, max_message_bytes: int
    ) -> None:
        self.transport: asyncio.Transport | None = transport
        self._endpoint = endpoint
        self._max_message_bytes = max_message_bytes
        self._tail = bytearray()  # bytes of a frame not complete yet
        self._early = b""  # bytes that came with the handshake (`start_reading`)
        self._tail_need = 2  # bytes `_tail` must hold before parsing is worth trying
        self._pong: bytes | None = None  # the newest ping's answer, while writes wait
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
        finds no transport (its response is never written) and ends. aiohttp's
        protocol is told the connection is gone (so its server forgets it) only
        once the running handler is done with the request: its `connection_lost`
        cancels the task that runs the handler, which is the caller's task.
        """
        http = request.protocol
        connection = cls.adopt(request.transport, endpoint, max_message_bytes)
        if connection is not None:
            # Frames the client sent right behind its head, which aiohttp read and
            # kept: read once the owner is ready for them (`start_reading`).
            connection._early = bytes(getattr(http, "_message_tail", b""))
            http._message_tail = b""
            http.transport = None  # aiohttp writes nothing more, and closes nothing
            task = asyncio.current_task()
            if task is None:
                http.connection_lost(None)
            else:
                task.add_done_callback(lambda _: http.connection_lost(None))
        return connection

    def start_reading(self) -> None:
        """The owner is ready for frames (it has the 101 on its way): read what
        came with the handshake, then whatever the transport holds (a connect set
        up in a task is paused meanwhile, `IofleetEngine.open_websocket`)."""
        transport = self.transport
        if transport is None:
            return
        transport.resume_reading()
        early, self._early = self._early, b""
        if early:
            self.data_received(early)

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
        pong, self._pong = self._pong, None
        if pong is not None:
            self.write(frame(OP_PONG, pong))
        self._endpoint.ws_writable(self)

    def eof_received(self) -> bool:
        return False  # the transport closes; `connection_lost` follows

    def connection_lost(self, exc: Exception | None) -> None:
        if self._close_timer is not None:
            self._close_timer.cancel()
            self._close_timer = None
        self.transport = None
        self._tail = bytearray()
        self._fragments = None
        self._pong = None
        self._endpoint.ws_lost(self)

    def data_received(self, data: bytes) -> None:
        """Parse every whole frame in what was kept from before plus `data`.

        Linear in the bytes received however they are split: an incomplete frame's
        bytes are appended to one buffer (`_tail`, a bytearray), never copied again
        with every read, and a frame's header is judged as soon as it is complete
        (a control frame over 125 bytes or a message over the limit is refused
        before its payload is waited for)."""
        tail = self._tail
        if tail:
            tail += data
            if len(tail) < self._tail_need:
                return  # the pending frame is still incomplete: nothing to parse
            buffer: bytes | bytearray = tail
        else:
            buffer = data
        end = len(buffer)
        pos = 0
        need = 0
        while end - pos >= 2 and self.transport is not None:
            first, second = buffer[pos], buffer[pos + 1]
            if first & 0x70 or not second & 0x80:
                detail = "reserved bits set" if first & 0x70 else "unmasked client frame"
                self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", detail)
                return
            opcode = first & 0x0F
            size = second & 0x7F
            head = pos + 2
            if opcode >= OP_CLOSE and (size > MAX_CONTROL_PAYLOAD or not first & 0x80):
                self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", "fragmented or long control frame")
                return
            if size == 126:
                if end - head < 2:
                    need = head + 2 - pos
                    break
                size = int.from_bytes(buffer[head : head + 2], "big")
                head += 2
                if size < 126:
                    self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", "length not minimal")
                    return
            elif size == 127:
                if end - head < 8:
                    need = head + 8 - pos
                    break
                size = int.from_bytes(buffer[head : head + 8], "big")
                head += 8
                if size < 65536 or size >> 63:
                    self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", "length not minimal")
                    return
            so_far = 0 if self._fragments is None else len(self._fragments)
            if size + so_far > self._max_message_bytes:
                detail = f"message over {self._max_message_bytes} bytes"
                self.refuse(CLOSE_MESSAGE_TOO_BIG, "oversize", detail)
                return
            if end - head < 4 + size:
                need = head + 4 + size - pos
                break
            payload = bytearray(buffer[head + 4 : head + 4 + size])
            if size:
                websocket_mask(bytes(buffer[head : head + 4]), payload)
            pos = head + 4 + size
            self._frame(first & 0x80, opcode, payload)
        if self.transport is None or self._tail is not tail:
            return  # closed or refused meanwhile: what is left is not read
        if pos >= end:
            tail.clear()
        elif buffer is tail:
            del tail[:pos]  # bytearray: drops the front without copying the rest
        else:
            tail += buffer[pos:]
        self._tail_need = max(need, 2)

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
        # Length and FIN were checked on the header (`data_received`).
        if opcode == OP_PING:
            if self.write_paused:
                # The client is not reading: answer only its newest ping once it does
                # (RFC 6455 5.5.3 allows that), so pings cannot grow our output.
                self._pong = bytes(payload)
            else:
                self.write(frame(OP_PONG, bytes(payload)))
        elif opcode == OP_CLOSE:
            problem = close_problem(payload)
            if problem is not None:
                self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", problem)
                return
            transport = self.transport
            if transport is None:
                return
            if not self._closing:  # the client's close: answer it (with its code, if any)
                self._closing = True
                transport.write(frame(OP_CLOSE, bytes(payload[:2])))
            transport.close()  # flushes what is written, then closes
        elif opcode != OP_PONG:
            self.refuse(CLOSE_PROTOCOL_ERROR, "malformed", f"unknown control opcode {opcode}")

    def refuse(self, code: int, reason: str, detail: str) -> None:
        """The client broke the protocol: tell the owner once, close with `code`."""
        if self._closing or self.transport is None:
            return
        self._tail = bytearray()
        self._fragments = None
        transport = self.transport
        self._endpoint.ws_refused(reason, detail)
        self.close(code, detail)
        transport.close()  # what was read is dropped; the close frame still goes out


def close_problem(payload: bytes | bytearray) -> str | None:
    """Why a client's close frame payload breaks RFC 6455 5.5.1 / 7.4, or None: a
    payload is empty, or a status code a peer may send plus a UTF-8 reason."""
    if not payload:
        return None
    if len(payload) == 1:
        return "close payload of one byte"
    code = int.from_bytes(payload[:2], "big")
    if not (code in SENDABLE_CLOSE_CODES or 3000 <= code <= 4999):
        return f"close code {code} may not be sent"
    try:
        bytes(payload[2:]).decode()
    except UnicodeDecodeError:
        return "close reason is not UTF-8"
    return None


def is_deflate_offered(environ: Mapping[str, Any]) -> bool:
    return "permessage-deflate" in environ.get("HTTP_SEC_WEBSOCKET_EXTENSIONS", "")
