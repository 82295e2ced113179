"""The Socket.IO server: python-socketio's `AsyncServer` with iofleet's guards.

Applications register events with the plain python-socketio API (`HANDLERS`);
every guard lives here, at the hooks where the library receives a connection,
an event or a raw packet, so every application gets all of them:
- admission: drain, capacity, JWT (one `connect_error` message per cause), on
  every namespace; capacity and the connection gauge count Engine.IO
  connections (a client on two namespaces is one connection);
- per-event: rate limits per connection and per user (per connection only
  without an identity, `AUTH=none`), metrics, handler timing, one-line logs
  for handler errors (the client gets an error ack);
- per-packet: malformed packets close only the sender's transport;
- rooms: at most `MAX_ROOMS_PER_USER` rooms per user on this node, counted by
  the manager's room index (`server.sio.rooms`, the one owner of room state),
  so a join costs O(1);
- sending: every Socket.IO packet leaves for its clients through `hand_over`,
  the one place `iofleet_messages_sent_total` is counted.
The server sends no packet the application did not ask for.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson
import socketio
from engineio import packet as eio_packet
from socketio import packet as sio_packet

from server.core.lograte import LogLimiter
from server.core.metrics import Metrics
from server.core.ratelimit import KeyedBuckets, TokenBucket
from server.eio.engine import REFUSAL_LOG_SECONDS, IofleetEngine
from server.eio.socket import message
from server.settings import Settings
from server.sio.auth import AuthError, Identity, TokenVerifier, token_from_handshake
from server.sio.broadcast import BroadcastEmit, LocalBroadcastManager
from server.sio.cluster.recovery import Handoff, RecoveringFanoutManager
from server.sio.rooms import RoomIndex

log = logging.getLogger("iofleet.sio")
# The libraries' own loggers: passed in as loggers (not `False`) so that the
# libraries do not add a plain-text stderr handler beside our JSON lines; they
# log every packet at INFO, so only warnings and errors get through.
library_log = logging.getLogger("iofleet.library")
library_log.setLevel(logging.WARNING)

SYSTEM_EVENTS = frozenset({"connect", "disconnect"})
# A Socket.IO EVENT packet as text starts with this type digit.
EVENT_DIGIT = str(sio_packet.EVENT)
# The longest ack id the event fast path reads (python-socketio reads up to 100 digits;
# longer ones, never sent by stock clients, take its path).
FAST_ACK_ID_DIGITS = 15
ERROR_EVENT = "error"
# What a client connecting to a namespace nobody registered gets (as the Node server says it).
INVALID_NAMESPACE = {"message": "Invalid namespace"}


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


def decode_plain_event(text: str) -> tuple[int | None, Any] | None:
    """(ack id, data) of a text EVENT packet on the default namespace
    (`2[id][...]`), read as python-socketio's `Packet.decode` reads it; None for
    any other shape (a namespace, a long id), which takes python-socketio's path.
    Bad JSON raises ValueError, as there."""
    end = len(text)
    i = 1
    while i < end and i <= FAST_ACK_ID_DIGITS and text[i].isdigit():
        i += 1
    if i == end or text[i] != "[":
        return None
    return (int(text[1:i]) if i > 1 else None), orjson.loads(text[i:])


@dataclass
class Connection:
    """What this node knows about one client: an Engine.IO connection and the
    Socket.IO namespaces it has joined over it."""

    eio_sid: str
    user: str
    bucket: TokenBucket
    per_user: bool  # the user has an identity, so per-user limits apply
    sids: dict[str, str] = field(default_factory=dict)  # namespace -> Socket.IO sid
    strikes: int = 0  # events refused in a row
    warned: bool = False  # an `error` event went out for this run of refusals

    @property
    def owner(self) -> str:
        """Whom the room limit counts: the user, or this connection when anonymous."""
        return self.user if self.per_user else self.eio_sid


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
        self.connections: dict[str, Connection] = {}  # by Engine.IO sid
        self.user_clients: dict[str, set[str]] = {}  # user -> Engine.IO sids
        self.node_id = settings.node_id  # for applications (the chat app greets with it)
        self.user_buckets = KeyedBuckets(settings.rate_limit, settings.burst)
        self._series_by_label: dict[str, tuple[Any, Any]] = {}  # `_event_metrics`
        self._refusal_log = LogLimiter(log, REFUSAL_LOG_SECONDS)
        # Asked at admission; the drain controller owns the flag (server/node/drain.py).
        self.is_draining: Callable[[], bool] = lambda: False
        # Connection state recovery (`server.sio.cluster.recovery`), when the manager offers it.
        self.recovery: RecoveringFanoutManager | None = (
            client_manager if isinstance(client_manager, RecoveringFanoutManager) else None
        )
        if client_manager is None:
            client_manager = LocalBroadcastManager()
        if not isinstance(client_manager, RoomIndex) or not isinstance(
            client_manager, BroadcastEmit
        ):
            # The room limit asks the room index, and sends are counted in `hand_over`.
            raise TypeError(
                f"{type(client_manager).__name__}: the client manager must mix in "
                "RoomIndex and BroadcastEmit"
            )
        self.room_index: RoomIndex = client_manager
        super().__init__(
            client_manager=client_manager,
            async_mode="aiohttp",
            json=OrjsonCodec,
            logger=library_log,
            engineio_logger=library_log,
            cors_allowed_origins=settings.cors_allowed,
            transports=settings.transports,
            ping_interval=settings.ping_interval,
            ping_timeout=settings.ping_timeout,
            max_http_buffer_size=settings.max_message_bytes,
            http_compression=True,
            compression_threshold=1024,
            node_id=settings.node_id,
            ws_compression=settings.ws_compression,
            send_buffer_bytes=settings.send_buffer_bytes,
            send_queue_packets=settings.send_queue_packets,
            send_queue_bytes=settings.send_queue_bytes,
            # Room for handshakes whose Socket.IO CONNECT is still to come.
            max_sessions=settings.max_connections + settings.max_unconnected_sessions,
        )
        self.eio.reject_hook = self._on_packet_rejected
        self.eio.slow_consumer_hook = self._on_slow_consumer

    def _engineio_server_class(self) -> type[IofleetEngine]:
        # The one seam between python-socketio and iofleet's Engine.IO server
        # (`server.eio.engine`): python-socketio builds it here and then uses only
        # its public surface (tests/server/test_engine_seam.py).
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
        namespace = namespace or "/"
        if not self._serves(namespace):
            # python-socketio answers "Unable to connect"; clients and the protocol
            # test suite expect the reference server's payload.
            await self._send_packet(
                eio_sid,
                self.packet_class(
                    sio_packet.CONNECT_ERROR, data=INVALID_NAMESPACE, namespace=namespace
                ),
            )
            return
        handoff = None
        if self.recovery is not None and isinstance(data, dict) and data.get("pid"):
            handoff = await self._prepare_recovery(eio_sid, namespace, data)
        try:
            await super()._handle_connect(eio_sid, namespace, data)
        finally:
            if handoff is not None:
                await self._finish_recovery(handoff)

    async def _prepare_recovery(
        self, eio_sid: str, namespace: str, auth: dict[str, Any]
    ) -> Handoff | None:
        """A CONNECT carrying `pid`/`offset`: whether its session can be recovered.
        The token is checked first, and the session must be its user's; admission
        (drain, capacity, JWT) then runs as for any connection."""
        assert self.recovery is not None
        environ = self.environ.get(eio_sid, {})
        try:
            identity = self.verifier.verify(token_from_handshake(auth, environ))
        except AuthError:
            return None  # refused by the normal path, with its reason
        outcome = await self.recovery.prepare_recovery(
            eio_sid, namespace, str(auth["pid"]), auth.get("offset"), identity.user
        )
        if outcome == "recovered":
            return self.recovery.recovering(eio_sid, namespace)
        self.metrics.recoveries.labels(outcome).inc()
        log.info(
            "connection state not recovered; the client gets a new session",
            extra={
                "event": "recovery.refused",
                "outcome": outcome,
                "user": identity.user,
                "peer": peer(environ),
            },
        )
        return None

    async def _finish_recovery(self, handoff: Handoff) -> None:
        """After the CONNECT answer: replay what the socket missed (or give up, if
        the connection was refused)."""
        assert self.recovery is not None
        sid = handoff.session.sid
        if self.recovery.pid_of(sid) != handoff.session.pid:
            self.recovery.abandon(handoff)
            return
        replayed = await self.recovery.replay(handoff, self._send_packet)
        self.metrics.recoveries.labels("recovered").inc()
        self.metrics.recovery_replayed.inc(replayed)
        log.info(
            "connection state recovered",
            extra={
                "event": "recovery.recovered",
                "user": handoff.session.user,
                "rooms": len(handoff.session.rooms),
                "replayed": replayed,
            },
        )

    def _serves(self, namespace: str) -> bool:
        """A namespace the application registered (python-socketio's own rule)."""
        return (
            namespace in self.handlers
            or namespace in self.namespace_handlers
            or self.namespaces == "*"
            or namespace in self.namespaces
        )

    async def _trigger_event(self, event: str, namespace: str, *args: Any) -> Any:
        if event == "connect":
            return await self._connect(namespace, *args)
        if event == "disconnect":
            try:
                return await super()._trigger_event(event, namespace, *args)
            finally:
                self._forget(args[0], namespace)
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
            self._event_metrics(event, namespace)[1].observe(time.perf_counter() - started)

    async def _connect(self, namespace: str, sid: str, environ: dict[str, Any], *rest: Any) -> Any:
        auth = rest[0] if rest else None
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        client = self.connections.get(eio_sid)
        # The library may call twice (legacy signatures): admit once.
        if client is None or client.sids.get(namespace) != sid:
            try:
                identity = self._admit(environ, auth, new_client=client is None)
                if client is not None and identity.user != client.user:
                    raise Refused("auth", "auth: token is for another user than this connection")
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
            if client is None:
                client = self._add_client(eio_sid, identity)
            client.sids[namespace] = sid
            self.room_index.assign_owner(sid, namespace, client.owner)
            session: dict[str, Any] = {}
            if self.recovery is not None:
                # A recovered socket gets back what the application saved in its
                # session (Node's `socket.data`); identity and `recovered` are fresh.
                handoff = self.recovery.recovering(client.eio_sid, namespace)
                if handoff is not None and handoff.session.sid == sid:
                    session.update(handoff.session.data)
                session["recovered"] = await self._restore_rooms(sid, namespace, client.eio_sid)
            session.update(user=identity.user, guest=identity.guest)
            await self.save_session(sid, session, namespace=namespace)
        try:
            result = await super()._trigger_event("connect", namespace, sid, environ, *rest)
        except (socketio.exceptions.ConnectionRefusedError, ConnectionRefusedError, TypeError):
            self._forget(sid, namespace)
            raise
        if result is False:
            self._forget(sid, namespace)
            return False
        self.metrics.connections_total.inc()
        if self.recovery is not None:
            await self._start_recovery_session(sid, namespace)
        return None if result is self.not_handled else result

    async def _start_recovery_session(self, sid: str, namespace: str) -> None:
        assert self.recovery is not None
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        client = self.connections.get(eio_sid) if eio_sid is not None else None
        if client is not None:
            data = await self.get_session(sid, namespace=namespace)
            self.recovery.start_session(sid, namespace, client.eio_sid, client.user, data)

    async def save_session(self, sid: str, session: Any, namespace: str | None = None) -> None:
        await super().save_session(sid, session, namespace=namespace)
        if self.recovery is not None and isinstance(session, dict):
            self.recovery.save_data(sid, session)

    async def _restore_rooms(self, sid: str, namespace: str, eio_sid: str) -> bool:
        """A recovering socket gets its rooms back before the application's
        `connect` handler runs (as in Node); whether it is recovering."""
        assert self.recovery is not None
        handoff = self.recovery.recovering(eio_sid, namespace)
        if handoff is None or handoff.session.sid != sid:
            return False
        for room in sorted(handoff.session.rooms):
            try:
                await self.enter_room(sid, room, namespace=namespace)
            except RoomLimitExceeded:
                log.warning(
                    "recovery: room limit reached; the room is not restored",
                    extra={"event": "recovery.room_limit", "room": room[:100]},
                )
        return True

    def _add_client(self, eio_sid: str, identity: Identity) -> Connection:
        client = Connection(
            eio_sid=eio_sid,
            user=identity.user,
            bucket=TokenBucket(self.settings.rate_limit, self.settings.burst),
            per_user=self.settings.auth != "none",
        )
        self.connections[eio_sid] = client
        if client.per_user:
            self.user_clients.setdefault(client.user, set()).add(eio_sid)
        self.metrics.connections.set(len(self.connections))
        return client

    def _admit(self, environ: dict[str, Any], auth: object, new_client: bool = True) -> Identity:
        """The caller's identity, or `Refused` with the reason the client is told.

        Capacity counts Engine.IO connections: a client's second namespace is
        not a new connection.
        """
        if self.is_draining():
            raise Refused("draining", "server draining")
        if new_client and len(self.connections) >= self.settings.max_connections:
            raise Refused("capacity", "server at capacity")
        try:
            return self.verifier.verify(token_from_handshake(auth, environ))
        except AuthError as error:
            raise Refused("auth", str(error)) from None

    def _forget(self, sid: str, namespace: str) -> None:
        """A namespace connection ended: O(its rooms). The client goes with its
        last namespace."""
        if self.recovery is not None:
            self.recovery.end_session(sid)
        eio_sid = self.manager.eio_sid_from_sid(sid, namespace)
        client = self.connections.get(eio_sid) if eio_sid is not None else None
        if client is None or client.sids.get(namespace) != sid:
            return
        # Its rooms (and their count for the owner) go when the manager disconnects it.
        del client.sids[namespace]
        if client.sids:
            return
        del self.connections[client.eio_sid]
        clients = self.user_clients.get(client.user)
        if clients is not None:
            clients.discard(client.eio_sid)
            if not clients:
                del self.user_clients[client.user]
                self.user_buckets.forget(client.user)
        self.metrics.connections.set(len(self.connections))

    # --- events --------------------------------------------------------------

    async def _handle_event(
        self, eio_sid: str, namespace: str | None, id: int | None, data: Any
    ) -> None:
        namespace = namespace or "/"
        if not isinstance(data, list) or not data or not isinstance(data[0], str):
            raise ValueError("event without a name")
        event = data[0]
        self._event_metrics(event, namespace)[0].inc()
        conn = self.connections.get(eio_sid)
        if conn is not None and not self._allow(conn):
            await self._refuse_event(conn, namespace, id, event)
            return
        # python-socketio's `_handle_event`, less its per-event log call (INFO,
        # which our level drops) and with the task made on the loop directly.
        sid = self.manager.sid_from_eio_sid(eio_sid, namespace)
        if not self.manager.is_connected(sid, namespace):
            return
        handling = self._handle_event_internal(self, sid, eio_sid, data, namespace, id)
        if not self.async_handlers:
            await handling
            return
        self.eio.handle_in_task(handling)

    async def _handle_event_internal(
        self, server: Any, sid: str, eio_sid: str, data: list[Any], namespace: str, id: int | None
    ) -> None:
        """python-socketio's: the handler, then its ack. An ack orjson can encode
        (no bytes: those are binary attachments) is encoded here, with no `Packet`
        to build and scan for binary data."""
        result = await server._trigger_event(data[0], namespace, sid, *data[1:])
        if result is self.not_handled or id is None:
            return
        if result is None:
            args = []
        elif isinstance(result, tuple):
            args = list(result)
        else:
            args = [result]
        try:
            body = orjson.dumps(args).decode()
        except TypeError:
            pass  # bytes or what orjson refuses: python-socketio's packet path
        else:
            prefix = "3" if namespace == "/" else f"3{namespace},"
            self.hand_over((eio_sid,), f"{prefix}{id}{body}")
            return
        await server._send_packet(
            eio_sid, self.packet_class(sio_packet.ACK, namespace=namespace, id=id, data=args)
        )

    def _allow(self, conn: Connection) -> bool:
        # Both buckets must have a token; checking the connection first keeps
        # one noisy tab from draining its user's other tabs.
        if conn.bucket.take() and (not conn.per_user or self.user_buckets.take(conn.user)):
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

    def _event_metrics(self, event: str, namespace: str) -> tuple[Any, Any]:
        """The event's (messages received, handler seconds) series: looked up in
        prometheus-client (a lock and a key build) once per label, not per event."""
        label = self._event_label(event, namespace)
        series = self._series_by_label.get(label)
        if series is None:
            series = self._series_by_label[label] = (
                self.metrics.messages_received.labels(label),
                self.metrics.event_handler_seconds.labels(label),
            )
        return series

    def _event_label(self, event: str, namespace: str) -> str:
        # Client-chosen names must not become unbounded metric labels.
        if event in self.handlers.get(namespace, {}) and event not in SYSTEM_EVENTS:
            return event
        return "other"

    # --- packets -------------------------------------------------------------

    async def _handle_eio_message(self, eio_sid: str, data: Any) -> None:
        try:
            if (
                isinstance(data, str)
                and data[:1] == EVENT_DIGIT
                and eio_sid not in self._binary_packet
            ):
                # The most common packet, without a `Packet` object (which scans
                # the data for binary parts twice): python-socketio's dispatch.
                event = decode_plain_event(data)
                if event is not None:
                    await self._handle_event(eio_sid, None, event[0], event[1])
                    return
            await super()._handle_eio_message(eio_sid, data)
        except (ValueError, KeyError, TypeError, IndexError) as error:
            self._on_packet_rejected("malformed", eio_sid, f"{type(error).__name__}: {error}")
            await self.eio.close_transport(eio_sid)

    def _on_packet_rejected(self, reason: str, eio_sid: str | None, detail: str) -> None:
        self.metrics.events_rejected.labels(reason).inc()
        conn = self.connections.get(eio_sid) if eio_sid else None
        # A client can cause this at will (before authenticating, too): one line per
        # kind and interval, counting what it held back (`suppressed`).
        self._refusal_log.warning(
            "packet refused; closing the sender's transport",
            extra={
                "event": f"packet.{reason}",
                "detail": detail[:200],
                "eio_sid": eio_sid,
                "user": conn.user if conn else None,
            },
        )

    def _on_slow_consumer(self, eio_sid: str, queued: int) -> None:
        self.metrics.slow_consumers.inc()
        conn = self.connections.get(eio_sid)
        self._refusal_log.warning(
            "client does not read what it is sent; dropping its transport",
            extra={
                "event": "send.slow_consumer",
                "eio_sid": eio_sid,
                "user": conn.user if conn else None,
                "queued": queued,
            },
        )

    # --- sending ---------------------------------------------------------------

    def hand_over(self, eio_sids: Sequence[str], encoded: str | list[Any]) -> int:
        """The one place Socket.IO packets leave for clients, and are counted.

        `encoded` is one packet as `Packet.encode()` gives it: its text, or, with
        binary attachments, the text and then the attachments (one packet for the
        metric). The Engine.IO layer gets the text as a MESSAGE framed once for all
        of `eio_sids` (`server.eio.socket.message`): one client's is written at once
        when nothing is waiting before it, a broadcast's joins the frames of this
        loop pass (`server.sio.broadcast`). Returns how many clients took it.
        """
        if isinstance(encoded, str):
            shared, frame = message(encoded)
            if len(eio_sids) == 1:
                socket = self.eio.socket(eio_sids[0])
                sent = 1 if socket is not None and socket.send_one(shared, frame) else 0
            else:
                sent = self.eio.deliver(eio_sids, shared, frame)
        else:
            parts = [eio_packet.Packet(eio_packet.MESSAGE, part) for part in encoded]
            sent = 0
            for eio_sid in eio_sids:
                socket = self.eio.socket(eio_sid)
                if socket is not None:
                    for part in parts:  # queued in order, behind what is waiting
                        socket.send_nowait(part)
                    sent += 1
        self.metrics.messages_sent.inc(sent)
        return sent

    async def _send_packet(self, eio_sid: str, pkt: Any) -> None:
        """One packet to one client (acks, connects, direct emits, emits with a
        callback, replays)."""
        if (
            self.recovery is not None
            and pkt.packet_type == sio_packet.CONNECT
            and isinstance(pkt.data, dict)
        ):
            pid = self.recovery.pid_of(pkt.data.get("sid", ""))
            if pid is not None:  # the recovery session id (Socket.IO v4.6+)
                pkt.data = {**pkt.data, "pid": pid}
        self.hand_over((eio_sid,), pkt.encode())

    async def _send_eio_packet(self, eio_sid: str, eio_pkt: Any) -> None:
        # Only python-socketio's own manager `emit` sends this way, one Engine.IO
        # packet per part; `BroadcastEmit` leaves it nothing, so this stays a
        # guard: the text part is the Socket.IO packet, attachments follow it.
        if isinstance(eio_pkt.data, str):
            self.hand_over((eio_sid,), eio_pkt.data)
        else:
            await super()._send_eio_packet(eio_sid, eio_pkt)

    # --- rooms ---------------------------------------------------------------

    # The manager's room index (`server.sio.rooms`) holds every room fact; a sid on
    # another node is that node's to count; a sid's own room is not an application room.

    async def enter_room(self, sid: str, room: str, namespace: str | None = None) -> None:
        limit = self.settings.max_rooms_per_user
        if self.room_index.would_exceed(sid, namespace or "/", room, limit):
            raise RoomLimitExceeded(room)
        await super().enter_room(sid, room, namespace=namespace)

    def room_count(self) -> int:
        """Application rooms on this node (not the per-connection rooms)."""
        return self.room_index.app_room_count("/")

    # --- drain -----------------------------------------------------------------

    async def close_connection(self, eio_sid: str) -> bool:
        """Close a client's transport (`eio_sid`: a key of `connections`)."""
        if eio_sid not in self.connections:
            return False
        return bool(await self.eio.close_transport(eio_sid))


def peer(environ: dict[str, Any]) -> str | None:
    """The client's address, as the Engine.IO environ has it (`REMOTE_ADDR`)."""
    return environ.get("REMOTE_ADDR") or None
