"""The Socket.IO server: python-socketio's `AsyncServer` with iofleet's guards.

Applications register events with the plain python-socketio API (`HANDLERS`);
every guard lives here, at the hooks where the library receives a connection,
an event or a raw packet, so every application gets all of them:
- admission: drain, capacity, JWT (one `connect_error` message per cause);
- per-event: rate limits per connection and per user, metrics, handler timing,
  one-line logs for handler errors (the client gets an error ack);
- per-packet: malformed packets close only the sender's transport;
- rooms: at most `MAX_ROOMS_PER_USER` rooms per user on this node.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import orjson
import socketio
from socketio import packet as sio_packet

from server.auth import AuthError, Identity, TokenVerifier, token_from_handshake
from server.engine import IofleetEngine
from server.metrics import Metrics
from server.ratelimit import KeyedBuckets, TokenBucket
from server.settings import Settings

log = logging.getLogger("iofleet.sio")

SYSTEM_EVENTS = frozenset({"connect", "disconnect"})
HELLO_EVENT = "server:hello"
ERROR_EVENT = "error"


class Refused(Exception):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason  # the metric label
        self.message = message  # what the client's connect_error says


class RoomLimitExceeded(Exception):
    """`enter_room` would put a user in more rooms than MAX_ROOMS_PER_USER."""


class OrjsonCodec:
    """The json module interface python-socketio expects, backed by orjson.

    orjson refuses what JSON cannot say well (non-str keys, ints over 64 bits);
    those rare payloads fall back to the standard library.
    """

    @staticmethod
    def dumps(obj: Any, **kwargs: Any) -> str:
        try:
            return orjson.dumps(obj).decode()
        except TypeError:
            return json.dumps(obj, separators=(",", ":"))

    @staticmethod
    def loads(text: str | bytes, **kwargs: Any) -> Any:
        return orjson.loads(text)


@dataclass
class Connection:
    """What this node knows about one Socket.IO connection."""

    sid: str
    eio_sid: str
    user: str
    bucket: TokenBucket
    strikes: int = 0  # events refused in a row
    warned: bool = False  # an `error` event went out for this run of refusals


class IofleetServer(socketio.AsyncServer):  # type: ignore[misc]
    def __init__(
        self,
        settings: Settings,
        metrics: Metrics,
        client_manager: socketio.AsyncManager | None = None,
    ) -> None:
        self.settings = settings
        self.metrics = metrics
        self.verifier = TokenVerifier(settings)
        self.connections: dict[str, Connection] = {}
        self.user_sids: dict[str, set[str]] = {}
        self.user_buckets = KeyedBuckets(settings.rate_limit, settings.burst)
        # Asked at admission; the drain controller owns the flag (server/drain.py).
        self.is_draining: Callable[[], bool] = lambda: False
        super().__init__(
            client_manager=client_manager,
            async_mode="aiohttp",
            json=OrjsonCodec,
            logger=False,
            engineio_logger=False,
            cors_allowed_origins=settings.cors_allowed,
            transports=settings.transports,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_http_buffer_size=settings.max_message_bytes,
            http_compression=True,
            compression_threshold=1024,
            node_id=settings.node_id,
        )
        self.eio.reject_hook = self._on_packet_rejected

    def _engineio_server_class(self) -> type[IofleetEngine]:
        return IofleetEngine

    def start_manager(self) -> None:
        """Start the client manager (the Redis listener) now, with the app.

        python-socketio starts it on the first connection; a node must be
        subscribed before that, or `/readyz` never passes and no balancer
        ever sends it the first connection.
        """
        if not self.manager_initialized:  # type: ignore[has-type]
            self.manager_initialized = True
            self.manager.initialize()

    # --- admission -----------------------------------------------------------

    async def _handle_connect(self, eio_sid: str, namespace: str | None, data: Any) -> None:
        await super()._handle_connect(eio_sid, namespace, data)
        namespace = namespace or "/"
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if sid is not None and sid in self.connections:
            # After CONNECT has gone out, so every stock client processes it.
            await self._send_local(
                eio_sid, namespace, HELLO_EVENT, {"node_id": self.settings.node_id}
            )

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event == "connect":
            return await self._connect(namespace, *args)
        if event == "disconnect":
            self._forget(args[0])
            return await super()._trigger_event(event, namespace, *args)
        started = time.perf_counter()
        try:
            return await super()._trigger_event(event, namespace, *args)
        except RoomLimitExceeded:
            return {"ok": False, "error": "room limit reached"}
        except Exception as error:
            log.error(
                "event handler failed",
                extra={"event": "handler.error", "handler": event, "error": repr(error)[:300]},
            )
            return {"ok": False, "error": "internal error"}
        finally:
            self.metrics.event_handler_seconds.labels(self._event_label(event, namespace)).observe(
                time.perf_counter() - started
            )

    async def _connect(self, namespace: str, sid: str, environ: dict[str, Any], *rest: Any) -> Any:
        auth = rest[0] if rest else None
        if sid not in self.connections:  # the library may call twice (legacy signatures)
            try:
                identity = self._admit(environ, auth)
            except Refused as refusal:
                self.metrics.connections_rejected.labels(refusal.reason).inc()
                log.info(
                    "connection refused",
                    extra={
                        "event": "connect.refused",
                        "reason": refusal.message,
                        "peer": peer(environ),
                    },
                )
                raise socketio.exceptions.ConnectionRefusedError(refusal.message) from None
            self.connections[sid] = Connection(
                sid=sid,
                eio_sid=self.manager.eio_sid_from_sid(sid, namespace),
                user=identity.user,
                bucket=TokenBucket(self.settings.rate_limit, self.settings.burst),
            )
            self.user_sids.setdefault(identity.user, set()).add(sid)
            await self.save_session(sid, {"user": identity.user, "guest": identity.guest})
        try:
            result = await super()._trigger_event("connect", namespace, sid, environ, *rest)
        except (socketio.exceptions.ConnectionRefusedError, ConnectionRefusedError, TypeError):
            self._forget(sid)
            raise
        if result is False:
            self._forget(sid)
            return False
        self.metrics.connections_total.inc()
        self.metrics.connections.set(len(self.connections))
        return None if result is self.not_handled else result

    def _admit(self, environ: dict[str, Any], auth: object) -> Identity:
        """The caller's identity, or `Refused` with the reason the client is told."""
        if self.is_draining():
            raise Refused("draining", "server draining")
        if len(self.connections) >= self.settings.max_connections:
            raise Refused("capacity", "server at capacity")
        try:
            return self.verifier.verify(token_from_handshake(auth, environ))
        except AuthError as error:
            raise Refused("auth", str(error)) from None

    def _forget(self, sid: str) -> None:
        conn = self.connections.pop(sid, None)
        if conn is None:
            return
        sids = self.user_sids.get(conn.user)
        if sids is not None:
            sids.discard(sid)
            if not sids:
                del self.user_sids[conn.user]
                self.user_buckets.forget(conn.user)
        self.metrics.connections.set(len(self.connections))

    # --- events --------------------------------------------------------------

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        namespace = namespace or "/"
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ValueError("event without a name")
        event = data[0]
        self.metrics.messages_received.labels(self._event_label(event, namespace)).inc()
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        conn = self.connections.get(sid) if sid is not None else None
        if conn is not None and not self._allow(conn):
            await self._refuse_event(conn, namespace, id, event)
            return
        await super()._handle_event(eio_sid, namespace, id, data)

    def _allow(self, conn: Connection) -> bool:
        # Both buckets must have a token; checking the connection first keeps
        # one noisy tab from draining its user's other tabs.
        if conn.bucket.take() and self.user_buckets.take(conn.user):
            conn.strikes = 0
            conn.warned = False
            return True
        return False

    async def _refuse_event(
        self, conn: Connection, namespace: str, id: int | None, event: str
    ) -> None:
        conn.strikes += 1
        self.metrics.events_rejected.labels("rate_limit").inc()
        error = {"ok": False, "error": "rate limited", "event": event}
        if id is not None:
            await self._send_packet(
                conn.eio_sid,
                self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=[error]),
            )
        elif not conn.warned:  # one error event per run of refusals, not one per event
            conn.warned = True
            await self._send_local(conn.eio_sid, namespace, ERROR_EVENT, error)
        if conn.strikes >= self.settings.rate_limit_strikes:
            log.warning(
                "client over the rate limit for too long; closing its transport",
                extra={"event": "ratelimit.disconnect", "user": conn.user, "strikes": conn.strikes},
            )
            conn.strikes = 0
            await self.eio.close_transport(conn.eio_sid)

    async def _send_local(self, eio_sid: str, namespace: str, event: str, data: Any) -> None:
        """An event for a socket on this node: straight to it, not through the
        manager, which would also publish it to every node over Redis."""
        pkt = self.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, data])
        await self._send_packet(eio_sid, pkt)

    def _event_label(self, event: str, namespace: str) -> str:
        # Client-chosen names must not become unbounded metric labels.
        if event in self.handlers.get(namespace, {}) and event not in SYSTEM_EVENTS:
            return event
        return "other"

    # --- packets -------------------------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            self._on_packet_rejected("malformed", eio_sid, f"{type(error).__name__}: {error}")
            await self.eio.close_transport(eio_sid)

    def _on_packet_rejected(self, reason: str, eio_sid: str | None, detail: str) -> None:
        self.metrics.events_rejected.labels(reason).inc()
        sid = self.manager.sid_from_eio_sid(eio_sid, "/") if eio_sid else None
        conn = self.connections.get(sid) if sid else None
        log.warning(
            "packet refused; closing the sender's transport",
            extra={
                "event": f"packet.{reason}",
                "detail": detail[:200],
                "eio_sid": eio_sid,
                "user": conn.user if conn else None,
            },
        )

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        self.metrics.messages_sent.inc()
        await super()._send_packet(eio_sid, pkt)

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        # Room broadcasts encode once and come through here, one call per recipient.
        self.metrics.messages_sent.inc()
        await super()._send_eio_packet(eio_sid, eio_pkt)

    # --- rooms ---------------------------------------------------------------

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        conn = self.connections.get(sid)
        if conn is not None:  # a sid on another node is that node's to count
            joined = self.user_rooms(conn.user, namespace)
            if room not in joined and len(joined) >= self.settings.max_rooms_per_user:
                raise RoomLimitExceeded(room)
        await super().enter_room(sid, room, namespace=namespace)

    def user_rooms(self, user: str, namespace: str | None = None) -> set[str]:
        """Application rooms the user's connections on this node are in."""
        joined: set[str] = set()
        for sid in self.user_sids.get(user, ()):
            joined.update(r for r in self.rooms(sid, namespace=namespace) if r != sid)
        return joined

    def room_count(self) -> int:
        """Application rooms on this node (not the per-connection rooms)."""
        rooms = self.manager.rooms.get("/", {})
        return sum(1 for name in rooms if name is not None and name not in self.connections)

    # --- drain -----------------------------------------------------------------

    async def close_connection(self, sid: str) -> bool:
        conn = self.connections.get(sid)
        if conn is None:
            return False
        return bool(await self.eio.close_transport(conn.eio_sid))


def peer(environ: dict[str, Any]) -> str | None:
    request = environ.get("aiohttp.request")
    return getattr(request, "remote", None)
