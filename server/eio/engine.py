"""iofleet's Engine.IO v4 server: the one owner of the sessions table, the
handshake, the heartbeat, long-polling, the upgrade to WebSocket and CORS.

python-socketio builds its Engine.IO server through one seam,
`AsyncServer._engineio_server_class()` (`server.sio.server.IofleetServer` returns
this class), and then uses only the public surface python-engineio documents:
`on`, `attach`, `handle_request`, `send`, `send_packet`, `get_session`,
`save_session`, `session`, `disconnect`, `transport`, `shutdown`,
`start_background_task`, `sleep`, `create_event`, `generate_id`, `async_mode` and
`reason` (tests/server/test_engine_seam.py lists what python-socketio's source
reaches for and checks that this class has it). No python-engineio class is
subclassed; its packet and payload codecs (`engineio.packet`, `engineio.payload`)
are reused.

The rules, as the protocol (and its reference suite) asks: 400 for a missing or
unknown transport, an unsupported method, a bad `EIO` version, an unknown or
closed session, a request after the ping timeout, polling after the upgrade; the
handshake's `pingInterval` in exact milliseconds; a second WebSocket for a
session accepted and closed at once. No JSONP (Engine.IO v4 clients never use it).
"""

from __future__ import annotations

import asyncio
import base64
import gzip
import json
import logging
import re
import secrets
import zlib
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

from aiohttp import WSCloseCode, web
from engineio import packet as eio_packet
from engineio import payload as eio_payload

from server.contract import NODE_ID_RULE
from server.core.lograte import LogLimiter
from server.eio.deflate_ws import DeflateWebSocket
from server.eio.eager import step_eagerly
from server.eio.heartbeat import HeartbeatWheel, tick_for
from server.eio.socket import EngineSocket, RejectHook, SlowConsumerHook
from server.net.ws_accept import wsgi_environ
from server.net.ws_transport import (
    WEBSOCKET_VERSION,
    DetachedResponse,
    HandshakeRefusal,
    WebSocketConnection,
    handshake_refusal,
    is_deflate_offered,
    switching_protocols,
)
from server.settings import SEND_BUFFER_BYTES, SEND_QUEUE_BYTES, SEND_QUEUE_PACKETS

log = logging.getLogger("iofleet.engine")

# What an Engine.IO endpoint answers to; anything else is a 400 (the protocol's
# test suite and stock clients expect 400, not 405).
ENGINEIO_METHODS = frozenset({"GET", "POST", "OPTIONS"})
TRANSPORTS = ("polling", "websocket")
# How long a polling request waits for an upgrade in progress to read what
# has already arrived (see `IofleetEngine._settle_upgrade`).
UPGRADE_SETTLE_STEPS = 20
UPGRADE_SETTLE_STEP_SECONDS = 0.001
# Polling responses are compressed from this size when the client accepts it.
COMPRESSION_METHODS = ("gzip", "deflate")

# `IofleetEngine.generate_id`: `<node>.<random>`; python-socketio takes its Socket.IO
# sids from the same generator, so a room named like this is (likely) a sid's own room.
SID_RANDOM_BYTES = 15
SID_PATTERN = re.compile(rf"^{NODE_ID_RULE}\.[A-Za-z0-9_-]{{20}}$")


def node_of_sid(sid: object) -> str | None:
    """The node id a sid of the `generate_id` form names, or None if it is not one."""
    if not isinstance(sid, str) or not SID_PATTERN.match(sid):
        return None
    return sid.partition(".")[0]


# A refused request's log line: at most one per this many seconds for each kind.
REFUSAL_LOG_SECONDS = 10.0

Handler = Callable[..., Awaitable[Any]]


class Reason:
    """Why a connection ended (python-engineio's strings, which python-socketio passes
    on to applications)."""

    SERVER_DISCONNECT = "server disconnect"
    CLIENT_DISCONNECT = "client disconnect"
    PING_TIMEOUT = "ping timeout"
    TRANSPORT_CLOSE = "transport close"
    TRANSPORT_ERROR = "transport error"


class RandomIds:
    """URL-safe random strings of `SID_RANDOM_BYTES` bytes from the OS's CSPRNG,
    read in blocks: `os.urandom` is a system call, and every connection takes two
    ids (its Engine.IO and its Socket.IO sid). The bytes are the same
    `secrets.token_urlsafe` would use, only fetched `IDS_PER_READ` ids at a time."""

    IDS_PER_READ = 256

    def __init__(self) -> None:
        self._block = b""
        self._at = 0

    def next(self) -> str:
        at = self._at
        if at >= len(self._block):
            self._block = secrets.token_bytes(SID_RANDOM_BYTES * self.IDS_PER_READ)
            at = 0
        self._at = at + SID_RANDOM_BYTES
        raw = self._block[at : at + SID_RANDOM_BYTES]
        return base64.urlsafe_b64encode(raw).decode()


def _ignore_reject(reason: str, sid: str | None, detail: str) -> None:
    return None


def _ignore_slow(sid: str, queued: int) -> None:
    return None


def refusal_response(refusal: HandshakeRefusal) -> web.Response:
    """The HTTP answer to a refused opening handshake (426 names our version)."""
    headers = {"Sec-WebSocket-Version": WEBSOCKET_VERSION} if refusal.status == 426 else None
    return web.Response(status=refusal.status, text=refusal.reason, headers=headers)


async def refuse_websocket(request: web.Request, reason: str) -> web.WebSocketResponse:
    """Accept a WebSocket and close it at once (a second one for a session)."""
    ws = web.WebSocketResponse()
    await ws.prepare(request)
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())
    return ws


def translate_request(request: web.Request) -> dict[str, Any]:
    """The WSGI-style environ of a request through aiohttp: the one connects read
    before aiohttp have (`server.net.ws_accept.wsgi_environ`), plus the request.
    Applications read it in their connect handler (python-socketio passes it on)."""
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    environ = wsgi_environ(
        request.method, request.rel_url, request.version, request.headers, peername
    )
    environ["aiohttp.request"] = request
    return environ


def query_fields(query_string: str) -> dict[str, str]:
    """The first value of each field of a query string (percent-decoded where
    it has to be): what an Engine.IO handshake reads of its query."""
    fields: dict[str, str] = {}
    for part in query_string.split("&"):
        name, _, value = part.partition("=")
        if "%" in part or "+" in part:
            name, value = unquote_plus(name), unquote_plus(value)
        fields.setdefault(name, value)
    return fields


def http_response(response: Mapping[str, Any]) -> bytes:
    """A response dict (`status`, `headers`, `response`) as an HTTP/1.1 response
    that ends the connection (for connects taken before aiohttp)."""
    body = response["response"]
    payload: bytes = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {response['status']}"]
    lines += [f"{name}: {value}" for name, value in response["headers"]]
    lines += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + payload


def unauthorized(reason: Any) -> dict[str, Any]:
    """The answer to a handshake the application's connect handler refused."""
    return {
        "status": "401 UNAUTHORIZED",
        "headers": [("Content-Type", "application/json")],
        "response": json.dumps(reason if reason else "Unauthorized").encode(),
    }


INTERNAL_ERROR = {
    "status": "500 Internal Server Error",
    "headers": [("Content-Type", "text/plain")],
    "response": b"internal server error",
}


def compressed(body: bytes, accept_encoding: str) -> tuple[bytes, str | None]:
    """`body` in the first encoding the client accepts (gzip, deflate), or as is."""
    for encoding in (e.split(";")[0].strip() for e in accept_encoding.split(",")):
        if encoding == "gzip":
            return gzip.compress(body), encoding
        if encoding == "deflate":
            return zlib.compress(body), encoding
    return body, None


class IofleetEngine:
    """The Engine.IO server python-socketio builds (`IofleetServer._engineio_server_class`)."""

    reason = Reason
    async_mode = "aiohttp"

    def __init__(
        self,
        *,
        async_mode: str | None = "aiohttp",
        ping_interval: float = 25,
        ping_timeout: float = 20,
        max_http_buffer_size: int = 1_000_000,
        allow_upgrades: bool = True,
        http_compression: bool = True,
        compression_threshold: int = 1024,
        cors_allowed_origins: str | list[str] | None = None,
        cors_credentials: bool = True,
        transports: Iterable[str] | None = None,
        json: Any = None,
        logger: Any = None,
        async_handlers: bool = False,
        node_id: str = "node",
        ws_compression: bool = False,
        send_buffer_bytes: int = SEND_BUFFER_BYTES,
        send_queue_packets: int = SEND_QUEUE_PACKETS,
        send_queue_bytes: int = SEND_QUEUE_BYTES,
        max_sessions: int | None = None,
    ) -> None:
        if async_mode not in (None, "aiohttp"):
            raise ValueError(f"IofleetEngine serves on aiohttp only, not {async_mode!r}")
        if callable(cors_allowed_origins):
            raise ValueError("cors_allowed_origins: a list of origins, '*', or None")
        self.ping_interval = ping_interval
        self.ping_timeout = ping_timeout
        self.max_http_buffer_size = max_http_buffer_size
        self.allow_upgrades = allow_upgrades
        self.http_compression = http_compression
        self.compression_threshold = compression_threshold
        self.cors_allowed_origins = cors_allowed_origins
        self.cors_credentials = cors_credentials
        chosen = [name for name in transports or TRANSPORTS if name in TRANSPORTS]
        if not chosen:
            raise ValueError("transports: none of polling, websocket")
        self.transports = chosen
        if json is not None:
            # python-engineio's documented, process-wide codec switch.
            eio_packet.Packet.json = json
        # python-socketio runs its handlers itself; the engine awaits them inline
        # (`async_handlers` is accepted for its constructor and has no effect).
        del logger, async_handlers
        # Engine.IO sessions this node holds at most, whatever the layer above does
        # with them (a session that never sends a Socket.IO CONNECT holds memory
        # too): a handshake beyond it gets 503, which stock clients retry.
        self.max_sessions = max_sessions
        # permessage-deflate for clients that offer it, on aiohttp's WebSocket.
        self.ws_compression = ws_compression
        # The outbound bounds every connection keeps to (server/eio/socket.py).
        self.send_buffer_bytes = send_buffer_bytes
        self.send_queue_packets = send_queue_packets
        self.send_queue_bytes = send_queue_bytes
        self.sockets: dict[str, EngineSocket] = {}
        self.handlers: dict[str, Handler] = {}
        self.heartbeat = HeartbeatWheel(tick_for(ping_interval, ping_timeout))
        self.node_id = node_id
        self.reject_hook: RejectHook = _ignore_reject
        self.slow_consumer_hook: SlowConsumerHook = _ignore_slow
        # Tasks handling client packets (`handle_in_task`).
        self.handling: set[asyncio.Task[Any]] = set()
        self._random_ids = RandomIds()
        self._to_flush: list[EngineSocket] = []  # sockets holding frames (`flush_soon`)
        self._refusals = LogLimiter(log, REFUSAL_LOG_SECONDS)

    # --- the public surface python-socketio uses ------------------------------------

    def on(self, event: str, handler: Handler | None = None) -> Any:
        """Register the handler for `connect`, `message` or `disconnect`."""
        if event not in ("connect", "message", "disconnect"):
            raise ValueError(f"no Engine.IO event {event!r}")

        def set_handler(handler: Handler) -> Handler:
            self.handlers[event] = handler
            return handler

        return set_handler if handler is None else set_handler(handler)

    def attach(self, app: web.Application, engineio_path: str = "engine.io") -> None:
        # Every method reaches `handle_request`, which answers 400 to those it does not serve.
        app.router.add_route("*", f"/{engineio_path.strip('/')}/", self.handle_request)

    async def send(self, sid: str, data: Any) -> None:
        await self.send_packet(sid, eio_packet.Packet(eio_packet.MESSAGE, data=data))

    async def send_packet(self, sid: str, pkt: eio_packet.Packet) -> None:
        socket = self.sockets.get(sid)
        if socket is not None and not socket.closed:
            socket.send_nowait(pkt)

    async def get_session(self, sid: str) -> dict[str, Any]:
        return self._socket(sid).session

    async def save_session(self, sid: str, session: dict[str, Any]) -> None:
        self._socket(sid).session = session

    def session(self, sid: str) -> Any:
        """`async with engine.session(sid) as session:` the session, saved after."""
        engine = self

        class SessionContext:
            async def __aenter__(self) -> dict[str, Any]:
                self.session = await engine.get_session(sid)
                return self.session

            async def __aexit__(self, *exc: object) -> None:
                await engine.save_session(sid, self.session)

        return SessionContext()

    async def disconnect(self, sid: str | None = None) -> None:
        """Close one session (with a CLOSE packet), or every one."""
        if sid is None:
            sockets = list(self.sockets.values())
        else:
            sockets = [self.sockets[sid]] if sid in self.sockets else []
        for socket in sockets:
            await socket.close(reason=self.reason.SERVER_DISCONNECT)

    def transport(self, sid: str) -> str:
        return "websocket" if self._socket(sid).upgraded else "polling"

    async def shutdown(self) -> None:
        """Nothing runs in the background here (the heartbeat is loop timers that
        end with their sessions); the node closes connections itself."""
        return None

    def start_background_task(self, target: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
        return asyncio.ensure_future(target(*args, **kwargs))

    async def sleep(self, seconds: float = 0) -> None:
        await asyncio.sleep(seconds)

    def create_event(self) -> asyncio.Event:
        return asyncio.Event()

    def generate_id(self) -> str:
        # `<node>.<random>`: nginx routes a request that carries `?sid=` to its
        # node by this prefix (no sticky cookie in nginx OSS).
        return f"{self.node_id}.{self._random_ids.next()}"

    # --- handlers ------------------------------------------------------------------

    async def _accepted(self, sid: str, environ: dict[str, Any]) -> Any:
        """Whether the application takes the connection: True, or what it refused with."""
        handler = self.handlers.get("connect")
        if handler is None:
            return True
        try:
            verdict = await handler(sid, environ)
        except Exception:
            log.exception(
                "connect handler error", extra={"event": "engine.handler_error", "eio_sid": sid}
            )
            return False
        return True if verdict is None or verdict is True else verdict

    async def trigger_disconnect(self, sid: str, reason: str) -> None:
        handler = self.handlers.get("disconnect")
        if handler is None:
            return
        try:
            await handler(sid, reason)
        except Exception:
            log.exception(
                "disconnect handler error",
                extra={"event": "engine.handler_error", "eio_sid": sid},
            )

    # --- HTTP -------------------------------------------------------------------------

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        """Every request to the Engine.IO path."""
        method = request.method
        if method not in ENGINEIO_METHODS:
            return self._bad_request(request, f"Unsupported method {method}", "method")
        origin = request.headers.get("Origin")
        if origin and not self._request_origin_allowed(request, origin):
            return self._bad_request(request, f"{origin} is not an accepted origin.", "origin")
        if method == "OPTIONS":
            return self._response(request, 200, b"OK")
        query = request.query
        transport = query.get("transport")
        if transport not in self.transports:
            return self._bad_request(request, "Invalid transport", "transport")
        sid = query.get("sid")
        if sid is None:
            if query.get("EIO") != "4":
                return self._bad_request(
                    request,
                    "The client is using an unsupported version of the Socket.IO or "
                    "Engine.IO protocols",
                    "version",
                )
            if "j" in query:
                return self._bad_request(request, "JSONP is not supported", "jsonp")
            if method != "GET":
                return self._bad_request(request, f"Invalid session {sid}", "session")
            if self._full():
                return self._response(request, 503, b"server at capacity")
            return await self._handshake(request, transport)
        socket = self.sockets.get(sid)
        if socket is not None and not socket.closed and socket.pong_overdue():
            # The wheel's check may be a tick away: a request after the ping
            # timeout must find the session gone.
            await socket.close(wait=False, abort=False, reason=self.reason.PING_TIMEOUT)
        if socket is None or socket.closed or not socket.connected:
            return self._bad_request(request, f"Invalid session {sid}", "session")
        if method == "POST":
            return await self._post(request, socket)
        if transport == "websocket":
            return await self._upgrade(request, socket)
        if socket.upgrading:
            await self._settle_upgrade(socket)
        if socket.upgraded:
            return self._bad_request(request, "Unexpected HTTP request", "upgraded")
        return self._payload(request, await socket.poll())

    async def _handshake(self, request: web.Request, transport: str) -> web.StreamResponse:
        environ = translate_request(request)
        if transport == "websocket":
            refusal = handshake_refusal(environ)
            if refusal is not None:  # refused before a session exists for it
                return refusal_response(refusal)
        socket, verdict = await self._open_session(environ, transport)
        if socket is None:
            body = unauthorized(verdict)["response"]
            return self._response(request, 401, body, content_type="application/json")
        if transport == "websocket":
            return await self._serve_websocket(request, environ, socket)
        socket.connected = True
        return self._payload(request, await socket.poll())

    async def _open_session(
        self, environ: dict[str, Any], transport: str
    ) -> tuple[EngineSocket | None, Any]:
        """A new session with its OPEN packet queued and its heartbeat started, if
        the application's connect handler takes it; else (None, its verdict)."""
        sid = self.generate_id()
        socket = EngineSocket(self, sid)
        self.sockets[sid] = socket
        upgrades = (
            ["websocket"]
            if transport == "polling" and self.allow_upgrades and "websocket" in self.transports
            else []
        )
        opening = {
            "sid": sid,
            "upgrades": upgrades,
            "pingTimeout": round(self.ping_timeout * 1000),
            "pingInterval": round(self.ping_interval * 1000),
            "maxPayload": self.max_http_buffer_size,
        }
        socket.queue.put_nowait(eio_packet.Packet(eio_packet.OPEN, opening))
        verdict = await self._accepted(sid, environ)
        if verdict is not True:
            socket.abandon()
            self._refusals.info(
                "handshake refused by the application",
                extra={"event": "engine.connect_refused", "peer": environ.get("REMOTE_ADDR")},
            )
            return None, verdict
        socket.start_heartbeat()
        return socket, True

    async def _upgrade(self, request: web.Request, socket: EngineSocket) -> web.StreamResponse:
        """A polling session's WebSocket (the upgrade)."""
        if socket.upgrading or socket.upgraded:
            # One upgrade per session: a second WebSocket would take over (or hang
            # waiting for a probe that never comes). As the reference server does,
            # accept it and close it at once.
            return await refuse_websocket(request, "session already upgraded")
        environ = translate_request(request)
        refusal = handshake_refusal(environ)
        if refusal is not None:
            return refusal_response(refusal)
        return await self._serve_websocket(request, environ, socket)

    async def _serve_websocket(
        self, request: web.Request, environ: dict[str, Any], socket: EngineSocket
    ) -> web.StreamResponse:
        if self.ws_compression and is_deflate_offered(environ):
            ws = DeflateWebSocket(self.max_http_buffer_size, self.reject_hook, socket.sid)
            await ws.prepare(request)
            await socket.serve_deflate(ws)
            return ws.response
        conn = WebSocketConnection.take_over(request, socket, self.max_http_buffer_size)
        if conn is None:
            socket.handshake_lost()
        else:
            socket.attach_websocket(conn, switching_protocols(environ["HTTP_SEC_WEBSOCKET_KEY"]))
            conn.start_reading()
        return DetachedResponse(status=101)

    async def _post(self, request: web.Request, socket: EngineSocket) -> web.StreamResponse:
        if socket.upgraded:
            return self._bad_request(request, "Unexpected HTTP request", "upgraded")
        length = request.content_length
        if length is not None and length > self.max_http_buffer_size:
            await socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)
            return self._bad_request(request, "payload too large", "oversize")
        body = await request.read()
        try:
            text = body.decode()
            if len(body) > self.max_http_buffer_size:
                raise ValueError(f"payload over {self.max_http_buffer_size} bytes")
            await socket.handle_post(text)
        except ValueError as error:  # not UTF-8, not a payload, too large
            self.reject_hook("malformed", socket.sid, f"polling payload: {error}")
            await socket.close(wait=False, abort=True, reason=self.reason.TRANSPORT_ERROR)
            return self._bad_request(request, "Bad Request", "payload")
        return self._response(request, 200, b"OK")

    @staticmethod
    async def _settle_upgrade(socket: EngineSocket) -> None:
        """Let an upgrade in progress read what the client already sent.

        A client that sends the upgrade's last packet and then polls may have
        both read in one loop pass; the poll must see the upgrade done (400), as
        the reference server, which handles a read synchronously, sees it. A
        poll that comes while the upgrade truly waits on the client goes on to
        get its NOOP after at most this short wait.
        """
        for _ in range(UPGRADE_SETTLE_STEPS):
            if not socket.upgrading:
                return
            await asyncio.sleep(UPGRADE_SETTLE_STEP_SECONDS)

    # --- responses --------------------------------------------------------------------

    def _payload(self, request: web.Request, packets: list[eio_packet.Packet]) -> web.Response:
        """A long-poll answer: `packets` as one payload (possibly compressed)."""
        body = eio_payload.Payload(packets=packets).encode().encode()
        return self._response(request, 200, body, content_type="text/plain; charset=UTF-8")

    def _bad_request(self, request: web.Request, message: str, kind: str) -> web.Response:
        """400 with the reason as a JSON string (as python-engineio and Node answer);
        logged at most once per `REFUSAL_LOG_SECONDS` for each kind."""
        self._refusals.info(
            "engine.io request refused",
            extra={"event": f"engine.bad_request.{kind}", "detail": message[:200]},
            key=kind,
        )
        return self._response(request, 400, json.dumps(message).encode())

    def _response(
        self, request: web.Request, status: int, body: bytes, content_type: str = "text/plain"
    ) -> web.Response:
        headers = self._cors_headers(request)
        if self.http_compression and len(body) >= self.compression_threshold:
            body, encoding = compressed(body, request.headers.get("Accept-Encoding", ""))
            if encoding is not None:
                headers.append(("Content-Encoding", encoding))
        headers.append(("Content-Type", content_type))
        return web.Response(status=status, body=body, headers=headers)

    # --- CORS -------------------------------------------------------------------------

    def _allowed_origins(self, scheme: str, host: str | None, forwarded: Any) -> list[str] | None:
        """The origins allowed (None: any). The default (no setting) is the server's
        own origin, as seen directly and through a proxy's X-Forwarded-* fields."""
        setting = self.cors_allowed_origins
        if setting == "*" or (isinstance(setting, list) and "*" in setting):
            return None
        if isinstance(setting, str):
            return [setting]
        if setting is not None:
            return setting
        if not host:
            return []
        origins = [f"{scheme}://{host}"]
        proto, fwd_host = forwarded.get("X-Forwarded-Proto"), forwarded.get("X-Forwarded-Host")
        if proto or fwd_host:
            proto = (proto or scheme).split(",")[0].strip()
            fwd_host = (fwd_host or host).split(",")[0].strip()
            origins.append(f"{proto}://{fwd_host}")
        return origins

    def _origin_allowed(self, origin: str, scheme: str, host: str | None, forwarded: Any) -> bool:
        if self.cors_allowed_origins == []:
            return True  # CORS handling off
        allowed = self._allowed_origins(scheme, host, forwarded)
        return allowed is None or origin in allowed

    def _request_origin_allowed(self, request: web.Request, origin: str) -> bool:
        # The scheme as python-engineio's environ has it: X-Forwarded-Proto, else http.
        scheme = request.headers.get("X-Forwarded-Proto", "http")
        return self._origin_allowed(origin, scheme, request.headers.get("Host"), request.headers)

    def _cors_headers(self, request: web.Request) -> list[tuple[str, str]]:
        if self.cors_allowed_origins == []:
            return []
        headers: list[tuple[str, str]] = []
        origin = request.headers.get("Origin")
        if origin and self._request_origin_allowed(request, origin):
            headers.append(("Access-Control-Allow-Origin", origin))
        if request.method == "OPTIONS":
            headers.append(("Access-Control-Allow-Methods", "OPTIONS, GET, POST"))
        wanted = request.headers.get("Access-Control-Request-Headers")
        if wanted:
            headers.append(("Access-Control-Allow-Headers", wanted))
        if self.cors_credentials:
            headers.append(("Access-Control-Allow-Credentials", "true"))
        return headers

    # --- WebSocket connects taken before aiohttp (`server.net.ws_accept`) ------------

    def open_websocket(self, environ: dict[str, Any], transport: asyncio.Transport) -> bool:
        """Take a WebSocket connect read before aiohttp: True when it is one this
        server opens a session for as it stands (WebSocket allowed, `EIO=4`, no
        `sid` or JSONP, a valid opening handshake, an allowed `Origin`, no deflate
        to negotiate, room for a session), and the connect has started on
        `transport`; False leaves it to aiohttp's path (`handle_request`), which
        answers everything else, refusals included, by the same rules."""
        if "websocket" not in self.transports or self._full():
            return False
        fields = query_fields(environ["QUERY_STRING"])
        if (
            fields.get("transport") != "websocket"
            or fields.get("EIO") != "4"
            or "sid" in fields
            or "j" in fields
            or handshake_refusal(environ) is not None
            or (self.ws_compression and is_deflate_offered(environ))
        ):
            return False
        origin = environ.get("HTTP_ORIGIN")
        headers = {
            "X-Forwarded-Proto": environ.get("HTTP_X_FORWARDED_PROTO"),
            "X-Forwarded-Host": environ.get("HTTP_X_FORWARDED_HOST"),
        }
        if origin and not self._origin_allowed(
            origin, environ["wsgi.url_scheme"], environ.get("HTTP_HOST"), headers
        ):
            return False
        rest = step_eagerly(self._connect_websocket(environ, transport))
        if rest is not None:
            # What the client sends meanwhile waits in the socket
            # (`WebSocketConnection.start_reading` resumes).
            transport.pause_reading()
            self.handle_in_task(rest)
        return True

    async def _connect_websocket(
        self, environ: dict[str, Any], transport: asyncio.Transport
    ) -> None:
        """Open the session, then answer 101 on `transport` and serve the WebSocket
        there; a refusal or a failure is written as HTTP (never a bare close)."""
        try:
            socket, verdict = await self._open_session(environ, "websocket")
        except Exception:
            log.exception("websocket connect failed", extra={"event": "engine.connect_error"})
            socket, verdict = None, None
            response: dict[str, Any] = INTERNAL_ERROR
        else:
            response = unauthorized(verdict)
        if socket is None:
            if not transport.is_closing():
                transport.write(http_response(response))
                transport.close()
            return
        conn = WebSocketConnection.adopt(transport, socket, self.max_http_buffer_size)
        if conn is None:
            socket.handshake_lost()
            return
        socket.attach_websocket(conn, switching_protocols(environ["HTTP_SEC_WEBSOCKET_KEY"]))
        conn.start_reading()

    # --- what iofleet's Socket.IO layer and node use -------------------------------

    def deliver(self, eio_sids: Iterable[str], pkt: eio_packet.Packet, frame: bytes) -> int:
        """Give one encoded packet (`pkt`, its WebSocket `frame`) to each of `eio_sids`
        without awaiting: a write or a queue put each (`EngineSocket.send_ready`).
        Returns how many took it (closed and evicted connections do not)."""
        sockets = self.sockets
        sent = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is not None and socket.send_ready(pkt, frame):
                sent += 1
        return sent

    def socket(self, sid: str) -> EngineSocket | None:
        """The open session `sid`, or None."""
        socket = self.sockets.get(sid)
        return socket if socket is not None and not socket.closed else None

    def handle_in_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` (handling a client's packet: an event handler, packets that
        had to wait) in a task held until it is done: the loop keeps only weak
        references to tasks."""
        task = asyncio.get_running_loop().create_task(coro)
        self.handling.add(task)
        task.add_done_callback(self.handling.discard)

    def flush_soon(self, socket: EngineSocket) -> None:
        """Have `socket.flush_frames()` run when this loop pass ends (once per pass)."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush_frames)
        self._to_flush.append(socket)

    def _flush_frames(self) -> None:
        sockets, self._to_flush = self._to_flush, []
        for socket in sockets:
            socket.flush_frames()

    def forget(self, socket: EngineSocket) -> None:
        """`socket` is released: it leaves the sessions table."""
        if self.sockets.get(socket.sid) is socket:
            del self.sockets[socket.sid]

    async def close_transport(self, sid: str) -> bool:
        """Close a client's transport so it reconnects by itself.

        An Engine.IO CLOSE packet would make stock clients give up (and the JS
        client ignores it over WebSocket): instead close the session without
        sending CLOSE. Over WebSocket the socket closes (client: "transport
        close"); over polling the pending GET returns and the next one fails
        (client: "transport error"). Either way the client reconnects.
        """
        socket = self.socket(sid)
        if socket is None:
            return False
        await socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
        return True

    def _socket(self, sid: str) -> EngineSocket:
        socket = self.socket(sid)
        if socket is None:
            raise KeyError("Session not found")
        return socket

    def _full(self) -> bool:
        return self.max_sessions is not None and len(self.sockets) >= self.max_sessions
