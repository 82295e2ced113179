"""One Engine.IO connection: its session, its heartbeat, its outbound queue and
its transport (long-polling, then perhaps a WebSocket), owned here alone.

iofleet's own Engine.IO socket (no python-engineio class underneath; its
`engineio.packet` and `engineio.payload` codecs are reused). Who owns what:
- the heartbeat is an entry in the engine's `server.eio.heartbeat.HeartbeatWheel`,
  not a task or a timer per connection: a PING is one pre-built frame written to
  the transport, and a PONG only clears a flag;
- `close()` ends in `_release()`, the one place that leaves the heartbeat wheel,
  wakes whoever waits on the queue (the WebSocket writer ends and closes the
  socket; a pending GET returns) and removes the socket from the engine's table
  (STYLE.md #13: when a connection ends, nothing it started outlives it);
- the WebSocket is a `server.net.ws_transport.WebSocketConnection` (frames in as
  calls, frames out as bytes), or, for a client that negotiates permessage-deflate
  (`IOFLEET_WS_COMPRESSION`), aiohttp's `WebSocketResponse`
  (`server.eio.deflate_ws`), read by a loop and written by a task that runs only
  while packets are queued.

Outbound bytes are bounded per connection (`send_ready`, `send`): a broadcast frame
goes straight to an idle WebSocket's transport (gathered per loop pass, one write:
`flush_frames`) while that transport holds less than the engine's
`send_buffer_bytes` (`IOFLEET_SEND_BUFFER_BYTES`), and is otherwise queued; a
connection with `send_queue_packets` packets or `send_queue_bytes` bytes already
queued is a slow consumer: its transport is dropped (the engine's
`slow_consumer_hook` counts and logs it) instead of letting its backlog grow.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from engineio import packet as eio_packet
from engineio import payload as eio_payload

from server.eio.eager import step_eagerly
from server.eio.packet_queue import PacketQueue
from server.net.ws_transport import (
    CLOSE_HANDSHAKE_SECONDS,
    CLOSE_POLICY_VIOLATION,
    OP_BINARY,
    WebSocketConnection,
    frame,
    text_frame,
)

if TYPE_CHECKING:
    from server.eio.deflate_ws import DeflateWebSocket
    from server.eio.engine import IofleetEngine

log = logging.getLogger("iofleet.engine")

RejectHook = Callable[[str, str | None, str], None]
"""Called with (reason, engine.io sid or None, detail) when a packet is refused."""
SlowConsumerHook = Callable[[str, int], None]
"""Called with (engine.io sid, packets queued) when a slow consumer is dropped."""

SLOW_CONSUMER_REASON = "slow consumer"
# An Engine.IO PING as a final, unmasked WebSocket text frame ("2"): built once,
# written as is to every WebSocket at every heartbeat.
PING_FRAME = text_frame(b"2")
PING_PACKET = eio_packet.Packet(eio_packet.PING)
NOOP_PACKET = eio_packet.Packet(eio_packet.NOOP)
# An Engine.IO MESSAGE packet as text starts with this type digit.
MESSAGE_TYPE = str(eio_packet.MESSAGE)
# A Socket.IO EVENT (any namespace) inside an Engine.IO MESSAGE, as text.
EVENT_PREFIX = MESSAGE_TYPE + "2"
# Between the packets of a polling payload (Engine.IO v4: the record separator).
PAYLOAD_SEPARATOR = "\x1e"
# Engine.IO v4 packet types are the digits 0..6 (open..noop).
ENGINEIO_PACKET_TYPES = frozenset("0123456")
# Upgrade from polling over a `WebSocketConnection`: what the socket waits for.
PROBE_PING = 1  # the client's PING "probe"
PROBE_UPGRADE = 2  # then its UPGRADE
PROBE_PONG = "3probe"  # the answer to the probe
PROBE_PONG_FRAME = text_frame(PROBE_PONG.encode())
# Packets waiting behind one that is still being handled; past this many the
# connection stops reading until they are done.
INBOX_PAUSE_AT = 256
# Packets turned into frames per write of the WebSocket drain, so the transport
# can say it is full (`write_paused`) before the whole queue is framed.
DRAIN_BATCH = 64
# The heartbeat's two steps (`EngineSocket.beat`).
BEAT_PING = 0  # the next beat sends a PING
BEAT_CHECK = 1  # the next beat checks that its PONG came


def message(encoded: str) -> tuple[eio_packet.Packet, bytes]:
    """A Socket.IO packet's text as an Engine.IO MESSAGE: the packet (for queues and
    polling; its text is cached on it) and its WebSocket frame, each built once. The
    Socket.IO layer hands text here and never frames bytes itself."""
    pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    text: str = pkt.encode()
    return pkt, text_frame(text.encode())


class EngineSocket:
    """One Engine.IO connection; `_release()` is the one owner of its resources."""

    __slots__ = (
        "_awaiting_pong",
        "_beat",
        "_beat_key",
        "_close_reason",
        "_close_task",
        "_conn",
        "_deflate",
        "_direct_max_frame",
        "_direct_transport",
        "_draining",
        "_evicted",
        "_frames",
        "_frames_bytes",
        "_inbox",
        "_ping_sent",
        "_probe",
        "_probe_timer",
        "_released",
        "_sending",
        "_writer",
        "closed",
        "closing",
        "connected",
        "queue",
        "server",
        "session",
        "sid",
        "upgraded",
        "upgrading",
    )

    def __init__(self, server: IofleetEngine, sid: str) -> None:
        self.server = server
        self.sid = sid
        self.queue = PacketQueue()
        self.session: dict[str, Any] = {}  # python-socketio's per-namespace sessions
        self.connected = False  # the handshake was answered (OPEN sent)
        self.upgrading = False
        self.upgraded = False  # on a WebSocket
        self.closing = False
        self.closed = False
        self._beat = BEAT_PING
        self._beat_key: int | None = None  # its slot in the heartbeat wheel
        self._awaiting_pong = False
        self._ping_sent = 0.0  # loop time of the last PING
        self._close_task: asyncio.Task[None] | None = None
        self._close_reason: str | None = None
        self._released = False
        # The WebSocket below aiohttp (`server.net.ws_transport`): packets in arrive
        # as calls (`ws_message`), packets out are written by `_drain_to_websocket`.
        self._conn: WebSocketConnection | None = None
        # aiohttp's WebSocket, for a client that negotiated permessage-deflate.
        self._deflate: DeflateWebSocket | None = None
        self._direct_transport: asyncio.Transport | None = None  # broadcasts write here
        self._direct_max_frame: float = 0  # frames up to this size are shared
        # Broadcast frames taken this loop pass, written with one syscall when the pass
        # ends (`flush_frames`): a burst of broadcasts costs a recipient one write.
        self._frames: list[bytes] | None = None
        self._frames_bytes = 0
        self._sending = False  # the deflate writer holds packets taken off the queue
        self._writer: asyncio.Task[None] | None = None  # runs only while packets queue
        self._evicted = False  # dropped as a slow consumer (its close may be pending)
        self._probe = 0  # upgrading from polling over `_conn`: PROBE_PING, PROBE_UPGRADE
        self._probe_timer: asyncio.TimerHandle | None = None
        self._inbox: list[str | bytes] | None = None  # packets behind one being handled
        self._draining = False  # `_drain_to_websocket` is writing

    # --- heartbeat ------------------------------------------------------------------

    def start_heartbeat(self) -> None:
        """Called once the session is open: the first PING in `ping_interval`."""
        self._beat = BEAT_PING
        self._beat_key = self.server.heartbeat.add(self, self.server.ping_interval)

    def beat(self) -> None:
        """The heartbeat wheel's call: send a PING, or check that its PONG came."""
        self._beat_key = None
        if self.closing or self.closed:
            return
        server = self.server
        if self._beat == BEAT_PING:
            self._awaiting_pong = True
            self._ping_sent = server.heartbeat.now()
            if self._frames is None and self._writable(PING_FRAME):
                transport = self._direct_transport
                assert transport is not None  # checked by _writable
                transport.write(PING_FRAME)
            else:
                self.queue.put_nowait(PING_PACKET)
            self._beat = BEAT_CHECK
            self._beat_key = server.heartbeat.add(self, server.ping_timeout)
            return
        if self._awaiting_pong:  # no PONG within `ping_timeout`: the client is gone
            self._start_close(abort=False, reason=server.reason.PING_TIMEOUT)
            return
        self._beat = BEAT_PING
        due = self._ping_sent + server.ping_interval - server.heartbeat.now()
        self._beat_key = server.heartbeat.add(self, max(due, 0.0))

    def pong_overdue(self) -> bool:
        """A PING went unanswered for longer than `ping_timeout` (the wheel's check
        may not have run yet): a request must then find the session gone."""
        return (
            self._awaiting_pong
            and self.server.heartbeat.now() - self._ping_sent > self.server.ping_timeout
        )

    # --- inbound ---------------------------------------------------------------------

    async def receive(self, pkt: eio_packet.Packet) -> None:
        """One Engine.IO packet from the client (over polling or a WebSocket)."""
        kind = pkt.packet_type
        if kind == eio_packet.PONG:
            self._awaiting_pong = False
        elif kind == eio_packet.MESSAGE:
            await self._message(pkt.data)
        elif kind == eio_packet.UPGRADE:
            self.send_nowait(NOOP_PACKET)
        elif kind == eio_packet.CLOSE:
            await self.close(wait=False, abort=True, reason=self.server.reason.CLIENT_DISCONNECT)
        # Anything else (a PING, a NOOP, an OPEN from a client) means nothing here.

    async def _message(self, data: Any) -> None:
        """A MESSAGE packet's payload, to the engine's `message` handler (the
        Socket.IO layer), which logs what it refuses; an error it did not expect is
        logged here and the connection goes on."""
        handler = self.server.handlers.get("message")
        if handler is None:
            return
        try:
            await handler(self.sid, data)
        except Exception:
            log.exception(
                "message handler error",
                extra={"event": "engine.handler_error", "eio_sid": self.sid},
            )

    async def handle_post(self, body: str) -> None:
        """A polling POST's payload: its packets in order. Decoded here, not with
        `engineio.payload.Payload`, which refuses more than 16 packets: a stock
        client sends everything it buffered in one POST, and the body is already
        bounded in bytes (`max_http_buffer_size`), as Node bounds it. A packet
        that does not decode raises ValueError before any packet is handled."""
        if not body:
            return
        packets = [eio_packet.Packet(encoded_packet=part) for part in body.split(PAYLOAD_SEPARATOR)]
        for pkt in packets:
            await self.receive(pkt)

    # --- outbound: bounded -------------------------------------------------------------

    def send_nowait(self, pkt: eio_packet.Packet) -> None:
        """Queue `pkt` for the client, within the outbound bound."""
        if self._evicted or self.closed or not self._room_for_one_more():
            return
        self.queue.put_nowait(pkt)

    def send_ready(self, pkt: eio_packet.Packet, frame: bytes) -> bool:
        """Send a packet already encoded (`pkt`) and framed (`frame`), now.

        Straight to the transport when nothing is queued or being written before it
        (order is kept) and the transport is under its high-water mark; otherwise on
        the queue. False when the connection is closed or was just evicted.
        """
        if self.closing or self.closed or self._evicted:
            return False
        if self._writable(frame):
            self._send_raw(frame)
            return True
        if not self._room_for_one_more():
            return False
        self.queue.put_nowait(pkt)
        return True

    def send_one(self, pkt: eio_packet.Packet, frame: bytes) -> bool:
        """`send_ready` for a packet to this client alone (acks, sid emits, connects).

        On aiohttp's WebSocket, with nothing taken this loop pass and nothing
        queued, the frame is written at once: no flush callback to schedule for
        one frame. Below aiohttp it joins the frames of this pass (`send_ready`):
        a CONNECT and the greeting that follows it cost one write, not two.
        """
        if self._conn is None and self._frames is None and self._writable(frame):
            transport = self._direct_transport
            assert transport is not None  # checked by _writable
            transport.write(frame)
            return True
        return self.send_ready(pkt, frame)

    def _send_raw(self, frame: bytes) -> None:
        """Add `frame` to what goes out when this loop pass ends (`flush_frames`)."""
        frames = self._frames
        if frames is None:
            self._frames = [frame]
            self.server.flush_soon(self)
        else:
            frames.append(frame)
        self._frames_bytes += len(frame)

    def _writable(self, frame: bytes) -> bool:
        """Whether `frame` may go to the transport now, ahead of nothing."""
        transport = self._direct_transport
        return (
            transport is not None
            and not (self.closing or self.closed or self._evicted or self._sending)
            and self.queue.empty()
            and len(frame) <= self._direct_max_frame
            and transport.get_write_buffer_size() + self._frames_bytes
            < self.server.send_buffer_bytes
        )

    def flush_frames(self) -> None:
        """Write the broadcast frames taken since the last flush, in one write.

        Runs when the loop pass that took them ends (`IofleetEngine.flush_soon`),
        and before the writer sends anything, so queued packets never overtake them.
        """
        frames = self._frames
        if frames is None:
            return
        self._frames = None
        self._frames_bytes = 0
        ws = self._conn if self._conn is not None else self._deflate
        transport = ws.raw_transport() if ws is not None else None
        if transport is None:
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    def _room_for_one_more(self) -> bool:
        queue = self.queue
        server = self.server
        if queue.qsize() < server.send_queue_packets and queue.nbytes < server.send_queue_bytes:
            return True
        self._evict_slow_consumer()
        return False

    def _evict_slow_consumer(self) -> None:
        """Drop a client that does not read what it is sent: reported once, then closed.

        The WebSocket's transport is aborted at once (its writer may be stuck
        waiting for a drain that never comes); the close then runs as any other.
        """
        if self.closing or self.closed or self._evicted:
            return
        self._evicted = True
        self.server.slow_consumer_hook(self.sid, self.queue.qsize())
        transport = self._direct_transport
        self._frames = None
        if transport is not None:
            transport.abort()
        self._start_close(abort=True, reason=self.server.reason.TRANSPORT_ERROR)

    # --- long-polling ------------------------------------------------------------------

    async def poll(self) -> list[eio_packet.Packet]:
        """Packets for a polling client: wait until there is one, or the socket is
        released ([]).

        No timeout of its own: a live client gets a PING every `ping_interval`,
        and `_release()` wakes the waiter. A long-poll request cancelled because
        its client dropped the connection (aiohttp `handler_cancellation`, set by
        `server.node.app.serve`) closes the socket; the cancellation propagates.
        """
        if self.upgrading or self.upgraded:
            # Upgrading to a WebSocket: nothing more goes out over polling.
            return [NOOP_PACKET]
        try:
            await self.queue.wait_nonempty()
        except asyncio.CancelledError:
            self._start_close(abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            raise
        # One long-poll response carries at most what python-engineio's clients
        # decode in one payload (16: more and the client drops the connection);
        # the rest waits for the next GET.
        return self._take_queued(eio_payload.Payload.max_decode_packets)

    def _take_queued(self, limit: int | None = None) -> list[eio_packet.Packet]:
        """The packets queued now (at most `limit`); [] once the socket is released
        (the `None` `_release()` puts stays at the head, so every later taker sees
        it too)."""
        queue = self.queue
        packets: list[eio_packet.Packet] = []
        while not queue.empty() and (limit is None or len(packets) < limit):
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    # --- closing ---------------------------------------------------------------------

    async def close(
        self, wait: bool = True, abort: bool = False, reason: str | None = None
    ) -> None:
        """Close once (the disconnect handler, a CLOSE packet unless `abort`), then
        release.

        The close runs in a task of its own that the caller's cancellation cannot
        stop halfway (aiohttp cancels a request's handler when its client drops the
        connection, which is when closes happen): the disconnect handler and the
        release always finish, and the caller's cancellation still propagates.
        A close already under way returns at once (it may be the caller).
        """
        task = self._start_close(abort=abort, reason=reason, wait=wait)
        if task is not None:
            await asyncio.shield(task)

    def _start_close(
        self, abort: bool, reason: str | None, wait: bool = False
    ) -> asyncio.Task[None] | None:
        """The close, as a task of its own; None when a close is already under way."""
        if self._close_task is not None or self.closing or self.closed:
            return None
        self.closing = True
        self._close_task = asyncio.ensure_future(self._close(wait, abort, reason))
        return self._close_task

    async def _close(self, wait: bool, abort: bool, reason: str | None) -> None:
        reason = reason or self.server.reason.SERVER_DISCONNECT
        self._close_reason = reason
        try:
            await self.server.trigger_disconnect(self.sid, reason)
            if not abort:
                self.queue.put_nowait(eio_packet.Packet(eio_packet.CLOSE))
            self.closed = True
            if wait:
                # Let the writer flush the CLOSE packet, bounded: a polling client
                # that never polls again must not hold this coroutine forever.
                with contextlib.suppress(TimeoutError):
                    flush_within = self.server.ping_interval + self.server.ping_timeout
                    async with asyncio.timeout(flush_within):
                        await self.queue.join()
        finally:
            self._release()

    def abandon(self) -> None:
        """Forget a session whose handshake was refused or never answered: no
        disconnect handler (no connect was accepted), nothing held."""
        self.closing = True
        self._release()

    def _release(self) -> None:
        """Let go of everything this connection holds. Idempotent."""
        if self._released:
            return
        self._released = True
        self.closed = True
        self.flush_frames()  # what was sent before the close goes out before it
        self._direct_transport = self._frames = None
        if self._beat_key is not None:
            self.server.heartbeat.remove(self, self._beat_key)
            self._beat_key = None
        if self._probe:
            self._upgrade_failed()  # an upgrade still probing: its WebSocket closes too
        self._close_task = None
        if self._close_reason == self.server.reason.CLIENT_DISCONNECT and not self.upgraded:
            # The polling client said CLOSE: its pending GET answers NOOP at once (the
            # protocol's forced close, what the reference suite expects) instead of
            # waiting out the poll; its next request finds the session gone (400).
            self.queue.put_nowait(NOOP_PACKET)
        # Wake a pending GET, or start the WebSocket writer, which ends and closes the
        # WebSocket; the writer started, no later put starts another.
        self.queue.put_nowait(None)
        self.queue.on_idle_put = None
        self.server.forget(self)

    # --- the WebSocket (either kind) ------------------------------------------------

    def _use_websocket(self, ws: WebSocketConnection | DeflateWebSocket) -> None:
        """From now on packets go out over `ws`; broadcasts may write to it directly
        (`send_ready`)."""
        self._direct_transport = ws.raw_transport()
        self._direct_max_frame = ws.shared_frame_limit()
        self.queue.on_idle_put = self._start_writer
        if not self.queue.empty():
            self._start_writer()

    def _start_writer(self) -> None:
        """A packet was queued with no writer running. A WebSocket below aiohttp
        needs no task: the queue is written out here. aiohttp's gets a writer task
        that ends when the queue is empty: an idle connection keeps no task parked."""
        if self._conn is not None and self.upgraded:
            self._drain_to_websocket()
            return
        if self._writer is None and self._deflate is not None and self.upgraded:
            self._writer = asyncio.ensure_future(self._write(self._deflate))

    # --- the WebSocket below aiohttp (`server.net.ws_transport`) ---------------------

    def attach_websocket(self, conn: WebSocketConnection, handshake: bytes) -> None:
        """`conn` holds this socket's WebSocket; `handshake` is the 101 response
        still to send. A new connection uses it at once (the 101 and the OPEN
        packet go out in one write); a polling one first does the probe exchange
        (PING probe -> PONG probe, then UPGRADE) within `ping_timeout`."""
        if self.closing or self.closed:
            conn.write(handshake)
            conn.close()
            return
        if self._conn is not None or self._deflate is not None:
            # One upgrade per session, as the reference server: a second WebSocket
            # is accepted and closed at once.
            conn.write(handshake)
            conn.close(CLOSE_POLICY_VIOLATION, "session already upgraded")
            return
        self._conn = conn
        if not self.connected:
            self.connected = True
            self.upgraded = True
            self._send_raw(handshake)
            self._use_websocket(conn)
            return
        conn.write(handshake)
        self.upgrading = True  # hold packet sends during the upgrade
        self._probe = PROBE_PING
        loop = asyncio.get_running_loop()
        self._probe_timer = loop.call_later(self.server.ping_timeout, self._upgrade_failed)

    def handshake_lost(self) -> None:
        """The client left before its WebSocket could be taken: a new connection
        closes now, not at its first missed ping (an upgrade from polling just
        does not happen; the session goes on over polling)."""
        if not self.connected:
            self._start_close(abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def ws_message(self, data: str | bytes) -> None:
        """One message from the client: an Engine.IO packet."""
        if self._probe:
            self._upgrade_step(data)
            return
        if isinstance(data, str) and (not data or data[0] not in ENGINEIO_PACKET_TYPES):
            if self._conn is not None:
                self._conn.refuse(CLOSE_POLICY_VIOLATION, "malformed", "not an Engine.IO packet")
            return
        inbox = self._inbox
        if inbox is not None:  # behind a packet still being handled: in order
            inbox.append(data)
            conn = self._conn
            if len(inbox) == INBOX_PAUSE_AT and conn is not None and conn.transport is not None:
                conn.transport.pause_reading()
            return
        if isinstance(data, str) and data.startswith(EVENT_PREFIX):
            # An event: decoded, checked and handed to python-socketio, which runs
            # the application's handler in a task of its own; no task needed here.
            self._run_eagerly(self._message(data[1:]))
            return
        # Connects, acks (their callbacks run inline), binary parts, Engine.IO
        # packets: in a task, and what arrives meanwhile waits for it.
        self._inbox = []
        self.server.handle_in_task(self._handle_in_order(self._packet(data)))

    def _run_eagerly(self, coro: Any) -> None:
        """Run `coro` here, outside any task. Most finish without waiting on
        anything; one that waits goes on in a task, and this connection's later
        packets wait for it, so they are still handled in order."""
        try:
            rest = step_eagerly(coro)
        except Exception:
            log.exception(
                "engine.io receive error",
                extra={"event": "engine.receive_error", "eio_sid": self.sid},
            )
            return
        if rest is not None:
            self._inbox = []
            self.server.handle_in_task(self._handle_in_order(rest))

    async def _handle_in_order(self, first: Any) -> None:
        """Await `first`, then handle what arrived meanwhile, in arrival order."""
        try:
            await first
            inbox = self._inbox
            while inbox:
                await self._packet(inbox.pop(0))
        finally:
            self._inbox = None
            conn = self._conn
            if conn is not None and conn.transport is not None:
                conn.transport.resume_reading()

    async def _packet(self, data: str | bytes) -> None:
        """One packet read from a WebSocket."""
        try:
            if isinstance(data, str) and data[0] == MESSAGE_TYPE:
                await self._message(data[1:])
                return
            await self.receive(eio_packet.Packet(encoded_packet=data))
        except Exception:
            log.exception(
                "engine.io receive error",
                extra={"event": "engine.receive_error", "eio_sid": self.sid},
            )

    def _upgrade_step(self, data: str | bytes) -> None:
        conn = self._conn
        assert conn is not None
        try:
            pkt = eio_packet.Packet(encoded_packet=data)
        except Exception as error:  # ValueError, mostly: not an Engine.IO packet
            # Counted and logged as any malformed packet; the session goes on over polling.
            self.ws_refused("malformed", f"upgrade probe: {type(error).__name__}: {error}")
            self._upgrade_failed()
            return
        if self._probe == PROBE_PING:
            if pkt.packet_type != eio_packet.PING or pkt.data != "probe":
                self._upgrade_failed()
                return
            conn.write(PROBE_PONG_FRAME)
            self.queue.put_nowait(NOOP_PACKET)  # ends the long-poll
            self._probe = PROBE_UPGRADE
            return
        if pkt.packet_type != eio_packet.UPGRADE:
            self._upgrade_failed()
            return
        self._end_probe()
        if self.closed:
            conn.close()
            return
        self.upgraded = True
        self._use_websocket(conn)

    def _upgrade_failed(self) -> None:
        """The probe exchange failed or timed out: the WebSocket closes, the
        session goes on over polling."""
        conn = self._conn
        self._end_probe()
        self._conn = None
        if conn is not None:
            conn.close()

    def _end_probe(self) -> None:
        self._probe = 0
        self.upgrading = False
        if self._probe_timer is not None:
            self._probe_timer.cancel()
            self._probe_timer = None

    def ws_refused(self, reason: str, detail: str) -> None:
        self.server.reject_hook(reason, self.sid, detail)

    def ws_writable(self, conn: WebSocketConnection) -> None:
        if conn is self._conn and self.upgraded:
            self._drain_to_websocket()

    def ws_lost(self, conn: WebSocketConnection) -> None:
        """A WebSocket's TCP connection is gone: close the socket if it was the one
        the socket uses (an upgrade that never finished just ends: the session goes
        on over polling; a connection given up before is no longer the socket's)."""
        if conn is not self._conn:
            return
        if not self.upgraded:
            self._end_probe()
            self._conn = None
            return
        self._direct_transport = self._frames = None
        self._start_close(abort=True, reason=self.server.reason.TRANSPORT_CLOSE)

    def _drain_to_websocket(self) -> None:
        """Send what is queued to the WebSocket, in order (with the frames of this
        loop pass), while the transport takes it; `ws_writable` calls again when it
        has drained. At the release (`None` queued) the WebSocket closes after what
        came before it."""
        conn = self._conn
        if self._draining or conn is None:
            return
        self._draining = True
        try:
            self.flush_frames()  # frames taken before these packets go first
            while not self.queue.empty():
                if conn.write_paused:
                    if self._released:  # closing, to a client that does not read
                        conn.abort()
                    return
                packets = self._take_queued(DRAIN_BATCH)
                if not packets:  # released
                    conn.close()
                    return
                for pkt in packets:
                    if pkt is PING_PACKET:
                        self._send_raw(PING_FRAME)
                        continue
                    encoded = pkt.encode()
                    if isinstance(encoded, str):
                        self._send_raw(text_frame(encoded.encode()))
                    else:
                        self._send_raw(frame(OP_BINARY, encoded))
                self.flush_frames()
        finally:
            self._draining = False

    # --- aiohttp's WebSocket, with permessage-deflate (`server.eio.deflate_ws`) ------

    async def serve_deflate(self, ws: DeflateWebSocket) -> None:
        """Serve one deflating WebSocket: the probe exchange when upgrading, then
        a reader loop here, and a writer task only while packets are queued; both
        end with the socket."""
        if self._conn is not None or self._deflate is not None or self.closing:
            await ws.close()  # one upgrade per session
            return
        if self.connected and not await self._probe_deflate(ws):
            await ws.close()
            return
        self.connected = self.upgraded = True
        self._deflate = ws
        self._use_websocket(ws)
        try:
            while not self.closed:
                data = await ws.receive()
                if data is None:
                    break
                await self._packet(data)
        finally:
            # Any way out (client close, error, cancellation) closes the socket once;
            # `_release()` starts the writer, which closes the WebSocket.
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            if self._writer is not None:
                await self._writer

    async def _probe_deflate(self, ws: DeflateWebSocket) -> bool:
        """The probe exchange on aiohttp's WebSocket, each step within `ping_timeout`."""
        self.upgrading = True  # hold packet sends during the upgrade
        try:
            async with asyncio.timeout(self.server.ping_timeout):
                probe = eio_packet.Packet(encoded_packet=await ws.receive())
                if probe.packet_type != eio_packet.PING or probe.data != "probe":
                    return False
                await ws.send(PROBE_PONG)
                self.queue.put_nowait(NOOP_PACKET)  # ends the long-poll
                upgrade = eio_packet.Packet(encoded_packet=await ws.receive())
                return upgrade.packet_type == eio_packet.UPGRADE and not self.closed
        except (OSError, ValueError, TimeoutError, TypeError):
            return False
        finally:
            self.upgrading = False

    async def _write(self, ws: DeflateWebSocket) -> None:
        """Send what is queued, then end; at the release (`None` queued), or when
        the peer is gone, close the WebSocket and stay the writer, so none other
        starts."""
        try:
            while not self.queue.empty():
                packets = self._take_queued()
                if not packets:  # released
                    break
                self._sending = True
                self.flush_frames()  # frames taken before these packets go first
                for pkt in packets:
                    await ws.send(pkt.encode())
                self._sending = False
            else:
                self._writer = None  # all sent: the next put starts a writer again
                return
        except (OSError, ConnectionError):
            pass  # the peer went away mid-send; the reader sees it too
        except RuntimeError as error:  # aiohttp refusing a send: not expected, so said
            log.warning(
                "websocket send failed",
                extra={"event": "engine.send_error", "eio_sid": self.sid, "error": str(error)},
            )
        with contextlib.suppress(OSError, RuntimeError, TimeoutError):
            async with asyncio.timeout(CLOSE_HANDSHAKE_SECONDS):
                await ws.close()
