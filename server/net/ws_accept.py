"""WebSocket connects answered before aiohttp.

Most connections a Socket.IO node takes are stock clients opening a WebSocket
straight away: one `GET /socket.io/?EIO=4&transport=websocket` with the upgrade
headers, in one TCP segment. Through aiohttp, such a request costs a request
handler and its task, the HTTP parser, a `Request`, routing, middleware, the
WSGI environ python-engineio builds from the `Request`, and a response that is
never written (`server.net.ws_transport.DetachedResponse`), for a connection that
leaves aiohttp at once. Taking such connects here halved a connect's server CPU
time (`bench/fanout_bench.py`: about 310 to 143 µs).

So every public TCP connection starts with a `HandshakeSniffer`. Its first
bytes go to `environ_of_head`; when they are a complete, well-formed
WebSocket connect (and nothing else), the Engine.IO server takes the connection
itself (`server.eio.engine.IofleetEngine.open_websocket`). Anything else (polling,
a session's upgrade, a head split over two reads, a request to be refused, a
malformed or unusual request) goes to aiohttp with the bytes read, exactly as
if aiohttp had read them: aiohttp stays the one place where an HTTP request is
refused, and this module only ever says "mine" or "not mine".

The environ of a connect taken here has the keys python-engineio's aiohttp
driver sets (`HTTP_*` headers, `QUERY_STRING`, `PATH_INFO`, ...), with the
peer's real address in `REMOTE_ADDR`, but no `aiohttp.request` and no
`wsgi.input` (a handshake has no body).
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
    if not blank or rest or b"\x00" in head:
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
    if route != path:
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
        # As python-engineio's drivers do: a repeated field is one comma-joined value.
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


class HandshakeSniffer(asyncio.Protocol):
    """The first protocol of a public connection: hands its first bytes to
    `on_websocket_connect`, or else gives the connection to aiohttp's
    `RequestHandler` (made by `http`, the runner's `web.Server`) with those bytes."""

    __slots__ = ("_http", "_on_websocket_connect", "_path", "_taken", "_transport")

    def __init__(
        self, http: web.Server, path: str, on_websocket_connect: WebSocketConnectHandler
    ) -> None:
        self._http = http
        self._path = path
        self._on_websocket_connect = on_websocket_connect
        self._transport: asyncio.Transport | None = None
        self._taken = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]  # uvloop's is no subclass

    def data_received(self, data: bytes) -> None:
        transport = self._transport
        assert transport is not None
        if self._taken:
            # The connect is still being set up and the client sent more before
            # our 101: RFC 6455 4.1 forbids that.
            transport.close()
            return
        environ = environ_of_head(data, self._path, transport.get_extra_info("peername"))
        if environ is not None and self._on_websocket_connect(environ, transport):
            self._taken = True
            return
        handler = self._http()
        transport.set_protocol(handler)
        handler.connection_made(transport)
        handler.data_received(data)

    def eof_received(self) -> bool:
        return False  # the client left before sending a request: close


class PublicSite(web.BaseSite):
    """A TCP listener whose connections start with a `HandshakeSniffer`."""

    __slots__ = ("_host", "_on_websocket_connect", "_path", "_port")

    def __init__(
        self,
        runner: web.BaseRunner,
        host: str,
        port: int,
        path: str,
        on_websocket_connect: WebSocketConnectHandler,
    ) -> None:
        super().__init__(runner)
        self._host = host
        self._port = port
        self._path = path
        self._on_websocket_connect = on_websocket_connect

    @property
    def name(self) -> str:
        return f"http://{self._host}:{self._port}"

    async def start(self) -> None:
        await super().start()
        http = self._runner.server
        assert http is not None  # the runner is set up

        def sniffer() -> HandshakeSniffer:
            return HandshakeSniffer(http, self._path, self._on_websocket_connect)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(sniffer, self._host, self._port)
