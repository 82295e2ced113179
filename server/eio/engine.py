"""The Engine.IO layer: session ids that carry the node id, a WebSocket driver
that compresses only large frames and refuses malformed ones with one log line,
closing a client's transport so that stock clients reconnect, and the
handshake and request checks the Engine.IO protocol asks for (400 for a
missing or unknown transport and for unsupported methods; the handshake's
`pingInterval` in exact milliseconds)."""

from __future__ import annotations

import asyncio
import base64
import logging
import re
import secrets
from collections.abc import Callable, Collection, Coroutine, Iterable, Mapping
from typing import Any
from urllib.parse import unquote_plus

import engineio
from aiohttp import WSCloseCode, WSMsgType, web
from aiohttp.web import WebSocketResponse
from engineio import packet as eio_packet
from engineio.async_drivers import aiohttp as aiohttp_driver

from server.contract import NODE_ID_RULE
from server.eio.eager import step_eagerly
from server.eio.packet_queue import PacketQueue
from server.eio.socket import ENGINEIO_PACKET_TYPES, ReleasingSockets
from server.net.ws_accept import remote_address
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

# permessage-deflate costs CPU per frame; below about 1 KB it saves little.
COMPRESS_THRESHOLD_BYTES = 1024
# What an Engine.IO endpoint answers to; anything else is a 400 (the protocol's
# test suite and stock clients expect 400, not aiohttp's 405).
ENGINEIO_METHODS = frozenset({"GET", "POST", "OPTIONS"})
# How long a polling request waits for an upgrade in progress to read what
# has already arrived (see `IofleetEngine._settle_upgrade`).
UPGRADE_SETTLE_STEPS = 20
UPGRADE_SETTLE_STEP_SECONDS = 0.001

# `IofleetEngine.generate_id`: `<node>.<random>`; python-socketio takes its Socket.IO
# sids from the same generator, so a room named like this is (likely) a sid's own room.
SID_RANDOM_BYTES = 15
SID_PATTERN = re.compile(rf"^{NODE_ID_RULE}\.[A-Za-z0-9_-]{{20}}$")

# The environ key under which a connect taken before aiohttp (`IofleetEngine.open_websocket`)
# carries its transport until `LimitedWebSocket` adopts it.
WS_TRANSPORT_KEY = "iofleet.transport"

# The answer to a WebSocket connect python-engineio did not upgrade or refuse.
BAD_HANDSHAKE = {
    "status": "400 BAD REQUEST",
    "headers": [("Content-Type", "text/plain")],
    "response": b"Invalid websocket upgrade",
}

RejectHook = Callable[[str, str | None, str], None]
"""Called with (reason, engine.io sid or None, detail) when a packet is refused."""
SlowConsumerHook = Callable[[str, int], None]
"""Called with (engine.io sid, packets queued) when a slow consumer is dropped."""


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


class LimitedWebSocket(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """How python-engineio opens a WebSocket: below aiohttp (`server.net.ws_transport`),
    or, for a client that uses permessage-deflate (`IOFLEET_WS_COMPRESSION`),
    engineio's aiohttp WebSocket wrapper plus size/format checks and selective
    deflate."""

    _deflate_bits: int = 0

    async def __call__(self, environ: dict[str, Any]) -> web.StreamResponse | None:
        socket = self.handler.__self__  # the engineio socket (a ReleasingSocket)
        max_bytes = self.server.max_http_buffer_size
        response: web.StreamResponse | None
        if WS_TRANSPORT_KEY in environ:  # a connect taken before aiohttp (`open_websocket`)
            conn = WebSocketConnection.adopt(environ.pop(WS_TRANSPORT_KEY), socket, max_bytes)
            response = None
        elif not (self.server.ws_compression and is_deflate_offered(environ)):
            refusal = handshake_refusal(environ)
            if refusal is not None:  # `handle_request` asked first: only a guard
                socket.handshake_lost()
                return refusal_response(refusal)
            conn = WebSocketConnection.take_over(environ["aiohttp.request"], socket, max_bytes)
            response = DetachedResponse(status=101)
        else:
            return await self._serve_with_deflate(environ)
        if conn is None:
            socket.handshake_lost()
        else:
            socket.attach_websocket(conn, switching_protocols(environ["HTTP_SEC_WEBSOCKET_KEY"]))
            conn.start_reading()
        return response

    async def _serve_with_deflate(self, environ: dict[str, Any]) -> web.StreamResponse:
        """aiohttp's WebSocket, for a client that negotiates permessage-deflate."""
        request = environ["aiohttp.request"]
        max_bytes = self.server.max_http_buffer_size
        self._sock = WebSocketResponse(max_msg_size=max_bytes, compress=True)
        await self._sock.prepare(request)
        negotiated = self._sock.compress
        writer = getattr(self._sock, "_writer", None)
        if negotiated and writer is not None and hasattr(writer, "compress"):
            # aiohttp deflates every frame once negotiated and has no public
            # threshold: turn the default off and deflate large frames per send.
            self._deflate_bits = 15 if negotiated is True else int(negotiated)
            writer.compress = 0
        self.environ = environ
        await self.handler(self)
        return self._sock

    async def send(self, message: str | bytes) -> None:
        compress = self._deflate_bits if len(message) >= COMPRESS_THRESHOLD_BYTES else None
        if isinstance(message, bytes):
            await self._sock.send_bytes(message, compress=compress)
        else:
            await self._sock.send_str(message, compress=compress)

    async def wait(self) -> str | bytes:
        msg = await self._sock.receive()
        if msg.type is WSMsgType.ERROR:
            code = getattr(msg.data, "code", None)
            if code == WSCloseCode.MESSAGE_TOO_BIG:
                self._reject("oversize", f"message over {self.server.max_http_buffer_size} bytes")
            raise OSError("websocket error")
        if isinstance(msg.data, str):
            if not msg.data or msg.data[0] not in ENGINEIO_PACKET_TYPES:
                self._reject("malformed", "not an Engine.IO packet")
                raise OSError("malformed packet")
            return msg.data
        if isinstance(msg.data, bytes):
            return msg.data
        raise OSError("websocket closed")

    # Ready-made broadcast frames (`server.sio.broadcast`) go past aiohttp's writer to
    # the transport: the frames are final and unmasked, as aiohttp would build them.

    def raw_transport(self) -> asyncio.Transport | None:
        """The WebSocket's transport, while frames may still be written to it."""
        writer = getattr(self._sock, "_writer", None)
        transport = getattr(writer, "transport", None)
        if transport is None or transport.is_closing() or getattr(writer, "_closing", True):
            return None
        return transport  # type: ignore[no-any-return]

    def shared_frame_limit(self) -> float:
        """The largest ready-made frame this connection takes: any, unless it
        deflates large messages (its compressor keeps state across frames)."""
        return COMPRESS_THRESHOLD_BYTES - 1 if self._deflate_bits else float("inf")

    def _reject(self, reason: str, detail: str) -> None:
        owner = getattr(self.handler, "__self__", None)  # the engineio socket
        sid = getattr(owner, "sid", None)
        hook: RejectHook = getattr(self.server, "reject_hook", _ignore_reject)
        hook(reason, sid, detail)


def request_problem(
    method: str, query: Mapping[str, str], transports: Collection[str]
) -> str | None:
    """Why an Engine.IO request is refused before it reaches a session, or None.

    python-engineio takes a missing `transport` for `polling` and answers 405
    to methods it does not serve; the protocol wants 400 for both.
    """
    if method not in ENGINEIO_METHODS:
        return f"Unsupported method {method}"
    if method != "OPTIONS" and query.get("transport") not in transports:
        return "Invalid transport"
    return None


def refusal_response(refusal: HandshakeRefusal) -> web.Response:
    """The HTTP answer to a refused opening handshake (426 names our version)."""
    headers = {"Sec-WebSocket-Version": WEBSOCKET_VERSION} if refusal.status == 426 else None
    return web.Response(status=refusal.status, text=refusal.reason, headers=headers)


async def refuse_websocket(request: web.Request, reason: str) -> WebSocketResponse:
    ws = WebSocketResponse()
    await ws.prepare(request)
    await ws.close(code=WSCloseCode.POLICY_VIOLATION, message=reason.encode())
    return ws


def translate_request(request: web.Request) -> dict[str, Any]:
    """python-engineio's environ for an aiohttp request, as connects taken before
    aiohttp (`server.net.ws_accept`) have it: the peer's real address in
    `REMOTE_ADDR`/`REMOTE_PORT` (its driver puts 127.0.0.1 and 0 there) and
    `QUERY_STRING` as sent, percent-encoded as WSGI has it (its driver decodes
    it, so a value holding `&` or `=` could not be told apart)."""
    environ: dict[str, Any] = aiohttp_driver.translate_request(request)
    environ["QUERY_STRING"] = request.rel_url.raw_query_string
    transport = request.transport
    peername = transport.get_extra_info("peername") if transport is not None else None
    environ["REMOTE_ADDR"], environ["REMOTE_PORT"] = remote_address(peername)
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
    """python-engineio's response dict (`status`, `headers`, `response`) as an
    HTTP/1.1 response that ends the connection."""
    body = response["response"]
    payload: bytes = body.encode() if isinstance(body, str) else body
    lines = [f"HTTP/1.1 {response['status']}"]
    lines += [f"{name}: {value}" for name, value in response["headers"]]
    lines += [f"Content-Length: {len(payload)}", "Connection: close", "", ""]
    return "\r\n".join(lines).encode("latin-1") + payload


class IofleetEngine(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(
        self,
        *args: Any,
        node_id: str = "node",
        ws_compression: bool = False,
        send_buffer_bytes: int = SEND_BUFFER_BYTES,
        send_queue_packets: int = SEND_QUEUE_PACKETS,
        send_queue_bytes: int = SEND_QUEUE_BYTES,
        max_sessions: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(*args, **kwargs)
        # Engine.IO sessions this node holds at most, whatever the layer above does
        # with them (a session that never sends a Socket.IO CONNECT holds memory
        # too): a handshake beyond it gets 503, which stock clients retry.
        self.max_sessions = max_sessions
        # permessage-deflate for clients that offer it, on aiohttp's WebSocket.
        self.ws_compression = ws_compression
        # Tasks handling client packets (`handle_in_task`).
        self.handling: set[asyncio.Task[Any]] = set()
        # The outbound bounds every connection keeps to (server/eio/socket.py).
        self.send_buffer_bytes = send_buffer_bytes
        self.send_queue_packets = send_queue_packets
        self.send_queue_bytes = send_queue_bytes
        # Closed connections release their tasks and timers at once (server/eio/socket.py).
        self.sockets: ReleasingSockets = ReleasingSockets()
        self.node_id = node_id
        self._random_ids = RandomIds()
        self.reject_hook: RejectHook = _ignore_reject
        self.slow_consumer_hook: SlowConsumerHook = _ignore_slow
        self._to_flush: list[Any] = []  # sockets holding broadcast frames (`flush_soon`)
        self._async = {
            **self._async,  # type: ignore[has-type]
            "websocket": LimitedWebSocket,
            "translate_request": translate_request,
        }

    def attach(self, app: web.Application, engineio_path: str = "engine.io") -> None:
        super().attach(app, engineio_path)
        # Every other method reaches `handle_request` too, which answers 400.
        app.router.add_route("*", f"/{engineio_path.strip('/')}/", self.handle_request)

    async def handle_request(self, request: web.Request) -> web.StreamResponse:
        problem = request_problem(request.method, request.query, self.transports)
        if problem is not None:
            return web.Response(status=400, text=problem)
        if "sid" not in request.query and self._full():
            return web.Response(status=503, text="server at capacity")
        if request.method == "GET" and request.query.get("transport") == "websocket":
            # Refused here, before python-engineio registers a session for it.
            refusal = handshake_refusal(translate_request(request))
            if refusal is not None:
                return refusal_response(refusal)
        socket = self.sockets.get(request.query.get("sid", ""))
        if socket is not None and not socket.closed:
            # python-engineio notices a missed pong only when it next sends or
            # sweeps; a request after the ping timeout must find the session gone (400).
            await socket.check_ping_timeout()
            if socket.upgrading or socket.upgraded:
                if request.query.get("transport") == "websocket":
                    # One upgrade per session: a second WebSocket would take over
                    # (or hang waiting for a probe that never comes). As the
                    # reference server does, accept it and close it at once.
                    return await refuse_websocket(request, "session already upgraded")
                await self._settle_upgrade(socket)
        # A polling client's CLOSE: the socket's release answers its pending GET
        # (server/eio/socket.py), the one owner of what a closed connection holds.
        response: web.StreamResponse = await super().handle_request(request)
        return response

    def open_websocket(self, environ: dict[str, Any], transport: asyncio.Transport) -> bool:
        """Take a WebSocket connect read before aiohttp (`server.net.ws_accept`): True
        when it is one python-engineio's `handle_request` would hand straight to
        `_handle_connect` (WebSocket allowed, `EIO=4`, no `sid` or JSONP, a valid
        opening handshake, an allowed `Origin`, no deflate to negotiate), and
        the connect has started on `transport`; False leaves it to aiohttp's path,
        which answers everything else, refusals included."""
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
        if origin and self.cors_allowed_origins != []:
            allowed = self._cors_allowed_origins(environ)
            if allowed is not None and origin not in allowed:
                return False
        environ[WS_TRANSPORT_KEY] = transport  # `LimitedWebSocket` adopts it
        rest = step_eagerly(self._connect_websocket(environ, transport))
        if rest is not None:
            if WS_TRANSPORT_KEY in environ:
                # Not adopted yet: what the client sends meanwhile waits in the
                # socket (`WebSocketConnection.start_reading` resumes).
                transport.pause_reading()
            self.handle_in_task(rest)
        return True

    async def _connect_websocket(
        self, environ: dict[str, Any], transport: asyncio.Transport
    ) -> None:
        """python-engineio's connect, then, if it ends before the upgrade (the
        application refused it, or it failed), its answer written as HTTP."""
        try:
            response = await self._handle_connect(environ, "websocket")
        except Exception:
            log.exception("websocket connect failed", extra={"event": "engine.connect_error"})
            response = {
                "status": "500 Internal Server Error",
                "headers": [("Content-Type", "text/plain")],
                "response": b"internal server error",
            }
        if WS_TRANSPORT_KEY in environ and not transport.is_closing():  # never upgraded
            environ.pop(WS_TRANSPORT_KEY)
            if not isinstance(response, dict):
                # python-engineio served it as a poll (its own upgrade test failed,
                # which `handshake_refusal` rules out): never a bare close, and the
                # session it opened for the OPEN packet goes too.
                await self._drop_opened_session(response)
                response = BAD_HANDSHAKE
            transport.write(http_response(response))
            transport.close()

    def _full(self) -> bool:
        return self.max_sessions is not None and len(self.sockets) >= self.max_sessions

    async def _drop_opened_session(self, packets: Any) -> None:
        for pkt in packets if isinstance(packets, list) else ():
            if getattr(pkt, "packet_type", None) == eio_packet.OPEN:
                socket = self.sockets.get(pkt.data.get("sid", ""))
                if socket is not None:
                    await socket.close(wait=False, abort=True)

    @staticmethod
    async def _settle_upgrade(socket: Any) -> None:
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

    def deliver(self, eio_sids: Iterable[str], pkt: eio_packet.Packet, frame: bytes) -> int:
        """Give one encoded packet (`pkt`, its WebSocket `frame`) to each of `eio_sids`
        without awaiting: a write or a queue put each (`ReleasingSocket.send_ready`).
        Returns how many took it (closed and evicted connections do not)."""
        sockets = self.sockets
        sent = 0
        for eio_sid in eio_sids:
            socket = sockets.get(eio_sid)
            if socket is not None and socket.send_ready(pkt, frame):
                sent += 1
        return sent

    def handle_in_task(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Run `coro` (handling a client's packet: an event handler, packets that
        had to wait) in a task held until it is done: the loop keeps only weak
        references to tasks."""
        task = asyncio.get_running_loop().create_task(coro)
        self.handling.add(task)
        task.add_done_callback(self.handling.discard)

    def flush_soon(self, socket: Any) -> None:
        """Have `socket.flush_frames()` run when this loop pass ends (once per pass)."""
        if not self._to_flush:
            asyncio.get_running_loop().call_soon(self._flush_frames)
        self._to_flush.append(socket)

    def _flush_frames(self) -> None:
        sockets, self._to_flush = self._to_flush, []
        for socket in sockets:
            socket.flush_frames()

    def create_queue(self, *args: Any, **kwargs: Any) -> Any:
        """A socket's packet queue (`server.eio.packet_queue`: small, and it corrects
        the handshake's `pingInterval`)."""
        if args or kwargs:  # not a socket's packet queue
            return super().create_queue(*args, **kwargs)
        interval_s = self.ping_interval + self.ping_interval_grace_period
        return PacketQueue(round(interval_s * 1000))

    def generate_id(self) -> str:
        # `<node>.<random>`: nginx routes a request that carries `?sid=` to its
        # node by this prefix (no sticky cookie in nginx OSS).
        return f"{self.node_id}.{self._random_ids.next()}"

    async def close_transport(self, sid: str) -> bool:
        """Close a client's transport so it reconnects by itself.

        An Engine.IO CLOSE packet would make stock clients give up (and the JS
        client ignores it over WebSocket): instead mark the socket closed
        without sending CLOSE, then wake its writer. Over WebSocket the writer
        ends and closes the socket (client: "transport close"); over polling
        the pending GET returns and the next one fails (client: "transport error").
        Either way the client's reconnection logic takes over.
        """
        socket = self.sockets.get(sid)
        if socket is None or socket.closed:
            return False
        await socket.close(wait=False, abort=True, reason=self.reason.SERVER_DISCONNECT)
        socket.queue.put_nowait(None)
        return True
