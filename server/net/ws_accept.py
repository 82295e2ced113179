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
request head is read by aiohttp's own request parser (`request_parser`: the C
parser over llhttp, built as aiohttp's `RequestHandler` builds it), piece by
piece as the bytes arrive, within the head timeout. When the parser has read
one whole head, with nothing after it, and that head is a WebSocket connect for
`/socket.io/` (`connect_environ`: an HTTP/1.1 GET of that path, the upgrade to
`websocket` aiohttp's parser recognises, no body), the Engine.IO server may take
the connection itself (`server.eio.engine.IofleetEngine.open_websocket`, which
checks the handshake by the rule it applies through aiohttp too,
`server.net.ws_transport.handshake_refusal`). Anything else (polling, a
session's upgrade, a head the parser refuses, one not complete within
`MAX_HEAD_BYTES`) goes to aiohttp with the bytes read, exactly as if aiohttp
had read them: aiohttp stays the one place where an HTTP request is refused,
and this module only ever says "mine" or "not mine".

Why aiohttp's parser, and not a hand-written one or `httptools`: one verdict.
A head is refused by the same code on both paths, so a head taken here is one
aiohttp accepts, whatever the split of its bytes (the hand-written parser this
replaced took heads aiohttp refuses: two `User-Agent` fields, the old draft's
`Sec-WebSocket-Key1`; tests/server/test_head_verdict.py compares the two paths
on generated heads). `httptools` is the same llhttp without aiohttp's own checks
on top (fields allowed once, `Host` for HTTP/1.1, NUL in values, the field
count, the URL), so it would be a second verdict to keep in step, for about
3.5 µs a head less. `bench/head_parse.py` (medians of 15 runs of 10,000 heads, shared
machine): a stock client's head cost 12.5 µs with the hand-written parser, checks
and environ, 16.6 µs with aiohttp's parser, checks and environ (8.8 µs of it the
parser alone; httptools alone 5.2 µs); the whole sniff + checks + 101, 26.2 and
32.1 µs, against 200-300 µs of server CPU per connect (README, "WebSocket
connects before aiohttp").

The environ of a connect taken here is the one a request through aiohttp gets
(`wsgi_environ`, the one builder: `HTTP_*` headers, `QUERY_STRING`,
`PATH_INFO`, ...), with the peer's real address in `REMOTE_ADDR`, but no
`aiohttp.request` (a handshake has no body).
"""

from __future__ import annotations

import asyncio
import enum
import inspect
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from aiohttp import web
from aiohttp.base_protocol import BaseProtocol
from aiohttp.http import (
    HttpProcessingError,
    HttpRequestParser,
    HttpVersion,
    HttpVersion11,
    RawRequestMessage,
)
from aiohttp.web_protocol import MAX_MSG_QUEUE_SIZE, RequestHandler, RequestPayloadError

if TYPE_CHECKING:
    from yarl import URL  # aiohttp's URL type (`RawRequestMessage.url`, `Request.rel_url`)

WebSocketConnectHandler = Callable[[dict[str, Any], asyncio.Transport], bool]
"""Takes (environ, transport) of a WebSocket connect; True when it took the
connection, False to leave the request to aiohttp (which then answers it)."""

# The longest request head read here: a head not complete within it goes to
# aiohttp (whose limits are per line, 8190 bytes, and 128 fields).
MAX_HEAD_BYTES = 8192
# Fields that announce a body: a request with one is not a handshake.
BODY_FIELDS = frozenset({"Content-Length", "Content-Type", "Transfer-Encoding"})
# What a request head starts with: a method, a token of capital letters. Bytes that
# cannot start one (a TLS hello, say) go to aiohttp at once, which answers them.
METHOD_START = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# The answer to a head that did not arrive whole within the head timeout.
REQUEST_TIMEOUT = b"HTTP/1.1 408 Request Timeout\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
# The parser limits of aiohttp's `RequestHandler` as the public runner makes it (with
# its defaults: server/node/app.py passes none of these).
HANDLER_DEFAULTS = {
    name: parameter.default
    for name, parameter in inspect.signature(RequestHandler.__init__).parameters.items()
    if name in ("read_bufsize", "max_line_size", "max_field_size", "max_headers", "auto_decompress")
}


class UnreadBody(BaseProtocol):
    """The protocol a body's `StreamReader` pauses and resumes, for the parser
    here: a request with a body goes to aiohttp, which reads the body itself
    (with its own parser), so there is nothing to pause."""

    __slots__ = ()

    def pause_reading(self) -> None:
        return None

    def resume_reading(self, resume_parser: bool = True) -> None:
        return None


def request_parser(loop: asyncio.AbstractEventLoop) -> HttpRequestParser:
    """aiohttp's HTTP request parser (llhttp), built as aiohttp's `RequestHandler`
    builds its own (aiohttp/web_protocol.py): what it accepts or refuses is what
    aiohttp does when it reads the same bytes."""
    return HttpRequestParser(
        UnreadBody(loop),
        loop,
        HANDLER_DEFAULTS["read_bufsize"],
        max_line_size=HANDLER_DEFAULTS["max_line_size"],
        max_field_size=HANDLER_DEFAULTS["max_field_size"],
        max_headers=HANDLER_DEFAULTS["max_headers"],
        payload_exception=RequestPayloadError,
        auto_decompress=HANDLER_DEFAULTS["auto_decompress"],
        max_msg_queue_size=MAX_MSG_QUEUE_SIZE,
    )


def remote_address(peername: Any) -> tuple[str, str]:
    """`REMOTE_ADDR` and `REMOTE_PORT` for a transport's `peername` (IPv4 or IPv6)."""
    if isinstance(peername, tuple) and len(peername) >= 2:
        return str(peername[0]), str(peername[1])
    return "", "0"


def wsgi_environ(
    method: str,
    url: URL,
    version: HttpVersion,
    headers: Mapping[str, str],
    peername: Any,
) -> dict[str, Any]:
    """The WSGI-style environ of a request (its relative `url`, `headers` as
    parsed by aiohttp), as the Engine.IO server and applications read it, for
    connects read here and requests through aiohttp alike
    (`server.eio.engine.translate_request`): `HTTP_*` headers (a repeated field
    comma-joined), `QUERY_STRING` as sent (percent-encoded), the peer's real
    address in `REMOTE_ADDR`/`REMOTE_PORT`."""
    host, port = remote_address(peername)
    environ: dict[str, Any] = {
        "wsgi.errors": sys.stderr,
        "wsgi.version": (1, 0),
        "wsgi.async": True,
        "wsgi.multithread": False,
        "wsgi.multiprocess": False,
        "wsgi.run_once": False,
        "SERVER_SOFTWARE": "iofleet",
        "REQUEST_METHOD": method,
        "QUERY_STRING": url.raw_query_string,
        "RAW_URI": str(url),
        "SERVER_PROTOCOL": f"HTTP/{version[0]}.{version[1]}",
        "REMOTE_ADDR": host,
        "REMOTE_PORT": port,
        "SERVER_NAME": "iofleet",
        "SERVER_PORT": "0",
        "PATH_INFO": url.path,
        "SCRIPT_NAME": "",
    }
    for name, value in headers.items():
        key = name.upper().replace("-", "_")
        if key not in ("CONTENT_TYPE", "CONTENT_LENGTH"):
            key = "HTTP_" + key
        environ[key] = f"{environ[key]},{value}" if key in environ else value
    environ["wsgi.url_scheme"] = environ.get("HTTP_X_FORWARDED_PROTO", "http")
    return environ


def connect_environ(message: RawRequestMessage, path: str, peername: Any) -> dict[str, Any] | None:
    """The environ of `message` (a whole head aiohttp's parser read, with nothing
    after it) when it is a WebSocket connect for `path`, else None: an HTTP/1.1
    GET of exactly `path` (as sent) with no body. Whether it is a valid opening
    handshake the Engine.IO server decides, by the rule it applies to requests
    through aiohttp too (`server.net.ws_transport.handshake_refusal`)."""
    url = message.url
    if (
        message.method != "GET"
        or message.version != HttpVersion11
        or url.absolute
        or url.raw_path != path
        or any(name in message.headers for name in BODY_FIELDS)
    ):
        return None
    return wsgi_environ("GET", url, message.version, message.headers, peername)


class Incomplete(enum.Enum):
    """A head still to be completed by the bytes to come."""

    HEAD = enum.auto()


def read_head(
    parser: HttpRequestParser, head: bytes, data: bytes, path: str, peername: Any
) -> dict[str, Any] | Incomplete | None:
    """Feed `data`, the last piece of `head` (every byte of the connection so
    far), to `parser`: the environ of a whole WebSocket connect for `path`
    (`connect_environ`) with nothing after it; `Incomplete.HEAD` while the head
    may still come whole within `MAX_HEAD_BYTES`; else None (aiohttp's, with
    `head`). aiohttp's parser decides what is a well-formed head: what it
    refuses, aiohttp refuses with its own answer on the bytes handed on.

    The parser is fed at most `MAX_HEAD_BYTES` in all: a request with a body is
    aiohttp's anyway."""
    room = MAX_HEAD_BYTES - (len(head) - len(data))
    try:
        messages, upgraded, tail = parser.feed_data(data if len(data) <= room else data[:room])
    except HttpProcessingError:
        return None
    if not messages:
        return Incomplete.HEAD if len(head) < MAX_HEAD_BYTES else None
    if len(messages) != 1 or not upgraded or tail or len(head) > MAX_HEAD_BYTES:
        # No upgrade, or bytes after the head (a second request, frames sent
        # before our 101): aiohttp's, which reads them as it would anyway.
        return None
    return connect_environ(messages[0][0], path, peername)


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
        "_parser",
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
        self._parser: HttpRequestParser | None = None  # made by the first byte
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
        environ: dict[str, Any] | None = None
        if head[0] in METHOD_START:
            if self._parser is None:
                self._parser = request_parser(asyncio.get_running_loop())
            peername = transport.get_extra_info("peername")
            verdict = read_head(self._parser, head, data, self._path, peername)
            if verdict is Incomplete.HEAD:
                self._head = head  # the rest of the head is still to come
                return
            environ = verdict
        self._head = b""
        self._parser = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
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
