"""WebSocket connects answered before aiohttp.

Most connections a Socket.IO node takes are stock clients opening a WebSocket
straight away: one `GET /socket.io/?EIO=4&transport=websocket` with the upgrade
headers, in one TCP segment. Through aiohttp, such a request costs a request
handler and its task, the HTTP parser, a `Request`, routing, middleware, the
WSGI environ built from the `Request`, and a response that is
never written (`server.net.ws_transport.DetachedResponse`), for a connection that
leaves aiohttp at once. Taking such connects here halved a connect's server CPU
time (`bench/fanout_bench.py`: about 310 to 143 µs).

So every public TCP connection starts with a `HandshakeSniffer`. Its first
request head, read whole (however it is split over reads, within the head
timeout), goes to `environ_of_head`; when it is a complete, well-formed
WebSocket connect (and nothing else), the Engine.IO server takes the connection
itself (`server.eio.engine.IofleetEngine.open_websocket`). Anything else (polling,
a session's upgrade, a request to be refused, a malformed or unusual request)
goes to aiohttp with the bytes read, exactly as if aiohttp had read them:
aiohttp stays the one place where an HTTP request is refused, and this module
only ever says "mine" or "not mine".

The environ of a connect taken here has the keys of one through aiohttp
(`server.eio.engine.translate_request`: `HTTP_*` headers, `QUERY_STRING`,
`PATH_INFO`, ...), with the peer's real address in `REMOTE_ADDR`, but no
`aiohttp.request` (a handshake has no body).
"""

from __future__ import annotations

import asyncio
import re
import sys
from collections.abc import Callable
from typing import Any

from aiohttp import web

WebSocketConnectHandler = Callable[[dict[str, Any], asyncio.Transport], bool]
"""Takes (environ, transport) of a WebSocket connect; True when it took the
connection, False to leave the request to aiohttp (which then answers it)."""

# The longest request head taken here; aiohttp's own line limit is 8190 bytes.
MAX_HEAD_BYTES = 8192
# RFC 9110 5.1: a field name is a token.
FIELD_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
# Fields that announce a body: a request with one is not a handshake.
BODY_FIELDS = frozenset({"CONTENT_LENGTH", "CONTENT_TYPE", "TRANSFER_ENCODING"})
# More header lines than this are left to aiohttp (which refuses over 128); stock
# clients send about ten.
MAX_HEADER_LINES = 64
# Bytes no head taken here holds: controls other than the CRLF line ends and the
# tab, DEL, and anything outside ASCII (aiohttp's parser refuses most of them;
# whatever is declined, aiohttp answers, whichever way the bytes were split).
NOT_TAKEN_BYTES = re.compile(rb"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\xff]")
# What a request head starts with: a method, a token of capital letters. Bytes that
# cannot start one (a TLS hello, say) go to aiohttp at once, which answers them.
METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The answer to a head that did not arrive whole within the head timeout.
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"


def remote_address(peername: Any) -> tuple[str, str]:
    """`REMOTE_ADDR` and `REMOTE_PORT` for a transport's `peername` (IPv4 or IPv6)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), str(peername[1])
    return "", "0"


def environ_of_head(data: bytes, path: str, peer: Any) -> dict[str, Any] | None:
    """The WSGI environ of `data` when it is exactly one complete HTTP/1.1 GET
    head for `path` with no body, else None. `peer` is the transport's
    `peername` (for `REMOTE_ADDR`/`REMOTE_PORT`).

    Strict on purpose: whatever this declines, aiohttp's parser reads (and
    refuses with its own answer when it is malformed).
    """
    if len(data) > MAX_HEAD_BYTES or not data.startswith(b"GET "):
        return None
    head, blank, rest = data.partition(b"\r\n\r\n")
    if not blank or rest or NOT_TAKEN_BYTES.search(head) is not None:
        return None
    # Lines end in CRLF only: a bare CR or LF is not taken here.
    crlf = head.count(b"\r\n")
    if head.count(b"\r") != crlf or head.count(b"\n") != crlf:
        return None
    lines = head.decode("latin-1").split("\r\n")
    request_line = lines[0].split(" ")
    if len(request_line) != 3 or request_line[2] != "HTTP/1.1":
        return None
    target = request_line[1]
    route, _, query = target.partition("?")
    if route != path or "\t" in target or len(lines) - 1 > MAX_HEADER_LINES:
        return None
    host, port = remote_address(peer)
    environ: dict[str, Any] = {
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "iofleet",
        "REQUEST_METHOD": "GET",
        "QUERY_STRING": query,
        "RAW_URI": target,
        "SERVER_PROTOCOL": "HTTP/1.1",
        "REMOTE_ADDR": host,
        "REMOTE_PORT": port,
        "SERVER_NAME": "iofleet",
        "SERVER_PORT": "0",
        "PATH_INFO": route,
        "SCRIPT_NAME": "",
    }
    for line in lines[1:]:
        name, colon, value = line.partition(":")
        if not colon or FIELD_NAME.fullmatch(name) is None:
            return None  # also an obsolete folded line, which starts with a space
        key = name.upper().replace("-", "_")
        if key in BODY_FIELDS:
            return None
        key = "HTTP_" + key
        value = value.strip(" \t")
        # As `server.eio.engine.translate_request` does: a repeated field is one
        # comma-joined value.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    host_field = environ.get("HTTP_HOST")
    if not host_field or "," in host_field:
        return None  # HTTP/1.1 asks for exactly one Host (RFC 9112 3.2): aiohttp decides
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class HandshakeSniffer(asyncio.Protocol):
    """The first protocol of a public connection: reads its first request head
    whole (within `head_timeout` seconds, at most `MAX_HEAD_BYTES`), then hands it
    to `on_websocket_connect`, or else gives the connection to aiohttp's
    `RequestHandler` (made by `http`, the runner's `web.Server`) with those bytes.

    Reading the head whole before deciding makes the verdict the same however
    the bytes were split over reads, and bounds how long a connection may hold a
    slot without sending a request (aiohttp has no such timeout)."""

    __slots__ = (
        "_head",
        "_head_timeout",
        "_http",
        "_on_websocket_connect",
        "_path",
        "_taken",
        "_timer",
        "_transport",
    )

    def __init__(
        self,
        http: web.Server,
        path: str,
        on_websocket_connect: WebSocketConnectHandler,
        head_timeout: float,
    ) -> None:
        self._http = http
        self._path = path
        self._on_websocket_connect = on_websocket_connect
        self._head_timeout = head_timeout
        self._transport: asyncio.Transport | None = None
        self._taken = False
        self._head = b""  # a head not complete yet (at most MAX_HEAD_BYTES)
        self._timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(self._head_timeout, self._timed_out)

    def _timed_out(self) -> None:
        self._timer = None
        transport = self._transport
        if transport is None or transport.is_closing():
            return
        if self._head:
            transport.write(REQUEST_TIMEOUT)  # a partial head gets an answer; silence none
        transport.close()

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._taken:
            # The connect is still being set up and the client sent more before
            # our 101: RFC 6455 4.1 forbids that.
            transport.close()
            return
        head = self._head + data if self._head else data
        if (
            len(head) <= MAX_HEAD_BYTES
            and head[0] in METHOD_START
            and b"\r\n\r\n" not in head
            and b"\n\n" not in head
        ):
            self._head = head  # the rest of the head is still to come
            return
        self._head = b""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        environ = environ_of_head(head, self._path, transport.get_extra_info("peername"))
        if environ is not None and self._on_websocket_connect(environ, transport):
            self._taken = True
            return
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(head)

    def eof_received(self) -> bool:
        return False  # the client left before sending a whole request: close

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._transport = None


class PublicSite(web.BaseSite):
    """A TCP listener whose connections start with a `HandshakeSniffer`."""

    __slots__ = ("_backlog", "_head_timeout", "_host", "_on_websocket_connect", "_path", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        path: str,
        on_websocket_connect: WebSocketConnectHandler,
        head_timeout: float,
        backlog: int,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._path = path
        self._on_websocket_connect = on_websocket_connect
        self._head_timeout = head_timeout
        self._backlog = backlog

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        http = self._runner.server
        assert http is not None  # the runner is set up

        def sniffer() -> HandshakeSniffer:
            return HandshakeSniffer(
                http, self._path, self._on_websocket_connect, self._head_timeout
            )

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            sniffer, self._host, self._port, backlog=self._backlog
        )
