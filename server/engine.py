"""The Engine.IO layer: session ids that carry the node id, a WebSocket driver
that compresses only large frames and refuses malformed ones with one log line,
and closing a client's transport so that stock clients reconnect."""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable
from typing import Any

import engineio
from aiohttp import WSCloseCode, WSMsgType
from aiohttp.web import WebSocketResponse
from engineio.async_drivers import aiohttp as aiohttp_driver

from server.eio_socket import ReleasingSockets

log = logging.getLogger("iofleet.engine")

# permessage-deflate costs CPU per frame; below about 1 KB it saves little.
COMPRESS_THRESHOLD_BYTES = 1024
# Engine.IO v4 packet types are the digits 0..6 (open..noop).
ENGINEIO_PACKET_TYPES = frozenset("0123456")

RejectHook = Callable[[str, str | None, str], None]
"""Called with (reason, engine.io sid or None, detail) when a packet is refused."""


def _ignore_reject(reason: str, sid: str | None, detail: str) -> None:
    return None


class LimitedWebSocket(aiohttp_driver.WebSocket):  # type: ignore[misc]
    """engineio's aiohttp WebSocket wrapper, plus size/format checks and selective deflate."""

    _deflate_bits: int = 0

    async def __call__(self, environ: dict[str, Any]) -> WebSocketResponse:
        request = environ["aiohttp.request"]
        self._sock = WebSocketResponse(max_msg_size=self.server.max_http_buffer_size, compress=True)
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

    def _reject(self, reason: str, detail: str) -> None:
        owner = getattr(self.handler, "__self__", None)  # the engineio socket
        sid = getattr(owner, "sid", None)
        hook: RejectHook = getattr(self.server, "reject_hook", _ignore_reject)
        hook(reason, sid, detail)


class IofleetEngine(engineio.AsyncServer):  # type: ignore[misc]
    def __init__(self, *args: Any, node_id: str = "node", **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # Closed connections release their tasks and timers at once (server/eio_socket.py).
        self.sockets: ReleasingSockets = ReleasingSockets()
        self.node_id = node_id
        self.reject_hook: RejectHook = _ignore_reject
        self._async = {**self._async, "websocket": LimitedWebSocket}  # type: ignore[has-type]

    def generate_id(self) -> str:
        # `<node>.<random>`: nginx routes a request that carries `?sid=` to its
        # node by this prefix (no sticky cookie in nginx OSS).
        return f"{self.node_id}.{secrets.token_urlsafe(15)}"

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
