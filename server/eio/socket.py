"""An Engine.IO socket that releases everything it holds the moment it closes.

Works around python-engineio 4.15.1 (`engineio.async_socket.AsyncSocket`), where a
closed connection outlives its transport (issue 13; STYLE.md #13):
- the ping loop is a Task per connection sleeping `ping_interval` (25 s): it holds
  the socket, its queue and its coroutine until it wakes, whether the connection
  closed or not;
- a closed socket stays in `server.sockets` until the service task's next sweep or
  the next request with its sid (a polling client that sent CLOSE never sends one);
- the pending long-poll GET and the WebSocket writer are not woken by a close: they
  wait out `ping_interval + ping_timeout` (45 s) on the queue;
- a dropped long-poll request is swallowed as a timeout, and a client that stops
  answering pings is noticed only by the service task's sweep (up to another
  `ping_timeout`);
- the WebSocket loop starts a Task and a timer for every packet it reads.

`ReleasingSocket` keeps the protocol and the public behaviour and changes who owns
what: pings and the pong deadline are loop timers, not sleeping Tasks; `close()`
ends in `_release()`, the one place that cancels the timers, wakes whoever waits on
the queue (the WebSocket writer ends and closes the socket; a pending GET returns),
and removes the socket from the server's table. `ReleasingSockets` is the table
`IofleetEngine` keeps its sockets in: python-engineio creates every socket as a
plain `AsyncSocket` in `_handle_connect` and offers no factory hook, so the table
turns each one into a `ReleasingSocket` as it is registered, before it is used.
`tests/server/test_eio_socket.py` pins every upstream method this relies on.

Outbound bytes are bounded per connection (`send_ready`, `send`): a broadcast frame
goes straight to an idle WebSocket's transport (gathered per loop pass, one write:
`flush_frames`) while that transport holds less than the engine's
`send_buffer_bytes` (`IOFLEET_SEND_BUFFER_BYTES`), and is otherwise queued; a
connection with the engine's `send_queue_packets` (`IOFLEET_SEND_QUEUE_PACKETS`)
packets already queued is a slow consumer: its transport
is dropped (the server's `slow_consumer_hook` counts and logs it) instead of
letting its backlog grow without bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any

from engineio import exceptions as eio_exceptions
from engineio import packet as eio_packet
from engineio import payload as eio_payload
from engineio.async_socket import AsyncSocket

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

log = logging.getLogger("iofleet.engine")

# The outbound bounds are the engine's (`IofleetEngine.send_buffer_bytes`,
# `send_queue_packets`): a broadcast goes straight to a WebSocket's transport only
# below that many buffered bytes, above it packets queue behind the writer, which
# waits for the transport to drain; a connection with that many packets queued is
# a slow consumer. Broadcast packets are shared objects, so a full queue holds
# references, not copies.
SLOW_CONSUMER_REASON = "slow consumer"
# An Engine.IO PING as a final, unmasked WebSocket text frame ("2").
PING_FRAME = text_frame(b"2")
# An Engine.IO MESSAGE packet as text starts with this type digit.
MESSAGE_TYPE = str(eio_packet.MESSAGE)
# A Socket.IO EVENT (any namespace) inside an Engine.IO MESSAGE, as text.
EVENT_PREFIX = MESSAGE_TYPE + "2"
# Engine.IO v4 packet types are the digits 0..6 (open..noop).
ENGINEIO_PACKET_TYPES = frozenset("0123456")
# Upgrade from polling over a `WebSocketConnection`: what the socket waits for.
PROBE_PING = 1  # the client's PING "probe"
PROBE_UPGRADE = 2  # then its UPGRADE
PROBE_PONG_FRAME = text_frame(b"3probe")  # the answer to the probe
# Packets waiting behind one that is still being handled; past this many the
# connection stops reading until they are done.
INBOX_PAUSE_AT = 256
# Packets written per pass of the WebSocket drain (one write) before it checks
# whether the transport is full.
DRAIN_BATCH = 64


def message(encoded: str) -> tuple[eio_packet.Packet, bytes]:
    """A Socket.IO packet's text as an Engine.IO MESSAGE: the packet (for queues and
    polling; its text is cached on it) and its WebSocket frame, each built once. The
    Socket.IO layer hands text here and never frames bytes itself."""
    pkt = eio_packet.Packet(eio_packet.MESSAGE, encoded)
    text: str = pkt.encode()
    return pkt, text_frame(text.encode())


class ReleasingSocket(AsyncSocket):  # type: ignore[misc]
    """One Engine.IO connection; `_release()` is the one owner of its resources."""

    # Set by upstream's BaseSocket.__init__; annotated here for the type checker.
    server: Any
    sid: str
    queue: PacketQueue  # `IofleetEngine.create_queue`
    last_ping: float | None
    connected: bool
    upgrading: bool
    upgraded: bool
    closing: bool
    closed: bool

    # Class-level defaults: instances are made by python-engineio as plain
    # `AsyncSocket`s and adopted by `ReleasingSockets`, so `__init__` never runs here.
    _ping_timer: asyncio.TimerHandle | None = None
    _pong_deadline: asyncio.TimerHandle | None = None
    _close_task: asyncio.Task[None] | None = None
    _released: bool = False
    _close_reason: str | None = None
    _direct: Any = None  # the LimitedWebSocket broadcasts may write to directly
    _direct_transport: asyncio.Transport | None = None  # its transport
    _direct_max_frame: float = 0  # frames up to this size are shared (not deflated)
    # Broadcast frames taken this loop pass, written with one syscall when the pass
    # ends (`flush_frames`): a burst of broadcasts costs a recipient one write.
    _frames: list[bytes] | None = None
    _frames_bytes: int = 0
    _sending: bool = False  # the writer holds packets it has taken off the queue
    _websocket: Any = None  # the LimitedWebSocket once upgraded, for `_start_writer`
    _writer: asyncio.Task[None] | None = None  # runs only while packets are queued
    _evicted: bool = False  # dropped as a slow consumer (its close may still be pending)
    # The WebSocket when served below aiohttp (`server.net.ws_transport`): packets in
    # arrive as calls (`ws_message`), packets out are written by `_drain_to_websocket`.
    _conn: WebSocketConnection | None = None
    _probe: int = 0  # upgrading from polling over `_conn`: PROBE_PING, PROBE_UPGRADE
    _probe_timer: asyncio.TimerHandle | None = None
    _inbox: list[str | bytes] | None = None  # packets behind one still being handled
    _draining: bool = False  # `_drain_to_websocket` is writing

    # --- heartbeat: timers, not sleeping tasks ---------------------------------

    def schedule_ping(self) -> None:
        """Called at connect and on every PONG: the next PING in `ping_interval`."""
        # As upstream: only when the previous ping cycle completed (a PING went out).
        if not self.last_ping or self.closing or self.closed:
            return
        self.last_ping = None
        self._cancel_timers()
        loop = asyncio.get_running_loop()
        self._ping_timer = loop.call_later(self.server.ping_interval, self._ping)

    def _ping(self) -> None:
        self._ping_timer = None
        if self.closing or self.closed:
            return
        self.last_ping = time.time()
        if self._frames is None and self._writable(PING_FRAME):
            transport = self._direct_transport
            assert transport is not None  # checked by _writable
            transport.write(PING_FRAME)
        else:
            self.queue.put_nowait(eio_packet.Packet(eio_packet.PING))
        loop = asyncio.get_running_loop()
        self._pong_deadline = loop.call_later(self.server.ping_timeout, self._pong_missed)

    def _pong_missed(self) -> None:
        """No PONG within `ping_timeout`: the client is gone; close now, not at a sweep."""
        self._pong_deadline = None
        if not (self.closing or self.closed):
            self._close_soon(self.server.reason.PING_TIMEOUT, abort=False)

    def _close_soon(self, reason: str, abort: bool) -> None:
        """Close from a timer callback or a cancelled request, without waiting."""
        self._start_close(wait=False, abort=abort, reason=reason)

    def _start_close(
        self, wait: bool, abort: bool, reason: str | None
    ) -> asyncio.Task[None] | None:
        """The close, as a task of its own; None when a close is already under way."""
        if self._close_task is not None or self.closing or self.closed:
            return None
        self._close_task = asyncio.ensure_future(self._close(wait, abort, reason))
        return self._close_task

    def _cancel_timers(self) -> None:
        for timer in (self._ping_timer, self._pong_deadline):
            if timer is not None:
                timer.cancel()
        self._ping_timer = self._pong_deadline = None

    # --- outbound: bounded ---------------------------------------------------------

    def send_ready(self, pkt: Any, frame: bytes) -> bool:
        """Send a broadcast packet already encoded (`pkt`) and framed (`frame`), now.

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

    def send_one(self, pkt: Any, frame: bytes) -> bool:
        """`send_ready` for a packet to this client alone (acks, sid emits, connects).

        On aiohttp's WebSocket, with nothing taken this loop pass and nothing
        queued, the frame is written at once: no flush callback to schedule for
        one frame. Below aiohttp it joins the frames of this pass (`send_ready`):
        a CONNECT and the greeting that follows it cost one write, not two (on
        this machine a write that wakes the peer is the dearest part of a packet).
        Otherwise it goes behind what is waiting, so order is kept.
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
        ws = self._direct
        transport = ws.raw_transport() if ws is not None else None
        if transport is None:
            return
        transport.write(frames[0] if len(frames) == 1 else b"".join(frames))

    async def send(self, pkt: Any) -> None:
        """Upstream's send, within the same outbound bound as broadcasts."""
        if self._evicted or (not self.closed and not self._room_for_one_more()):
            return
        await super().send(pkt)

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
        hook = getattr(self.server, "slow_consumer_hook", None)
        if hook is not None:
            hook(self.sid, self.queue.qsize())
        transport = self._direct_transport
        self._frames = None
        if transport is not None:
            transport.abort()
        self._close_soon(self.server.reason.TRANSPORT_ERROR, abort=True)

    # --- the queue --------------------------------------------------------------

    async def poll(self) -> list[Any]:
        """Packets for the client: wait until there is one, or the socket is released.

        No timeout of its own (upstream waits `ping_interval + ping_timeout` with a
        Task and a timer per wait): a live client gets a PING every `ping_interval`,
        and `_release()` wakes the waiter with `None`. A long-poll request cancelled
        because its client dropped the connection (aiohttp `handler_cancellation`,
        set by `server.node.app.serve`) closes the socket and the cancellation propagates.
        """
        try:
            await self.queue.wait_nonempty()
        except asyncio.CancelledError:
            self._close_soon(self.server.reason.TRANSPORT_CLOSE, abort=True)
            raise
        # One long-poll response carries at most what python-engineio's clients
        # decode in one payload (16: more and the client drops the connection);
        # the rest waits for the next GET.
        return self._take_queued(eio_payload.Payload.max_decode_packets)

    def _take_queued(self, limit: int | None = None) -> list[Any]:
        """The packets queued now (at most `limit`); [] once the socket is released
        (the `None` `_release()` puts stays at the head, so every later taker sees
        it too)."""
        queue = self.queue
        packets: list[Any] = []
        while not queue.empty() and (limit is None or len(packets) < limit):
            pkt = queue.get_nowait()
            queue.task_done()
            if pkt is None:
                queue.put_nowait(None)
                break
            packets.append(pkt)
        return packets

    # --- closing ----------------------------------------------------------------

    async def close(
        self, wait: bool = True, abort: bool = False, reason: str | None = None
    ) -> None:
        """Close once (disconnect handlers, CLOSE packet unless `abort`), then release.

        The close runs in a task of its own that the caller's cancellation cannot
        stop halfway (aiohttp cancels a request's handler when its client drops the
        connection, which is when closes happen): the disconnect handlers and the
        release always finish, and the caller's cancellation still propagates.
        As upstream, a close already under way returns at once (it may be the caller).
        """
        task = self._start_close(wait, abort, reason)
        if task is not None:
            await asyncio.shield(task)

    async def _close(self, wait: bool, abort: bool, reason: str | None) -> None:
        self._close_reason = reason
        try:
            await super().close(wait=False, abort=abort, reason=reason)
            if wait:
                # Let the writer flush the CLOSE packet, bounded: a polling client
                # that never polls again must not hold this coroutine forever.
                with contextlib.suppress(TimeoutError):
                    flush_within = self.server.ping_interval + self.server.ping_timeout
                    async with asyncio.timeout(flush_within):
                        await self.queue.join()
        finally:
            self._release()

    def _release(self) -> None:
        """Let go of everything this connection holds. Idempotent."""
        if self._released:
            return
        self._released = True
        self.closed = True
        self.flush_frames()  # what was sent before the close goes out before it
        self._direct = self._direct_transport = self._frames = None
        self._cancel_timers()
        self._close_task = None
        if self._close_reason == self.server.reason.CLIENT_DISCONNECT and not self.upgraded:
            # The polling client said CLOSE: its pending GET answers NOOP at once (the
            # protocol's forced close, what the reference suite expects) instead of
            # waiting out the poll; its next request finds the session gone (400).
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))
        # Wake a pending GET, or start the WebSocket writer, which ends and closes the
        # WebSocket; the writer started, no later put starts another.
        self.queue.put_nowait(None)
        self.queue.on_idle_put = None
        sockets = self.server.sockets
        if sockets.get(self.sid) is self:
            del sockets[self.sid]

    # --- the WebSocket transport --------------------------------------------------

    async def _websocket_handler(self, ws: Any) -> None:
        """Serve one WebSocket: a reader loop here, and a writer task only while
        packets are queued (`_start_writer`); both end with the socket (the
        upstream loop leaves them to their 45 s timeouts)."""
        if self.connected:
            if not await self._upgrade_from_polling(ws):
                return
        else:
            self.connected = True
            self.upgraded = True
        self._use_websocket(ws)
        try:
            await self._read(ws)
        finally:
            # Any way out (client close, error, cancellation) closes the socket once;
            # `_release()` starts the writer, which closes the WebSocket.
            await self.close(wait=False, abort=True, reason=self.server.reason.TRANSPORT_CLOSE)
            if self._writer is not None:
                await self._writer

    def _use_websocket(self, ws: Any) -> None:
        """From now on packets go out over `ws` (a `LimitedWebSocket` or a
        `WebSocketConnection`); broadcasts may write to it directly (`send_ready`)."""
        self._direct = ws
        self._direct_transport = ws.raw_transport()
        self._direct_max_frame = ws.shared_frame_limit()
        self._websocket = ws
        self.queue.on_idle_put = self._start_writer
        if not self.queue.empty():
            self._start_writer()

    def _start_writer(self) -> None:
        """A packet was queued with no writer running: start one. An idle connection
        keeps no task parked on its queue; most packets never queue at all
        (`send_one`, `send_ready`, `_ping` write to the transport). A WebSocket
        below aiohttp needs no task: the queue is written out here."""
        if self._conn is not None:
            self._drain_to_websocket()
            return
        if self._writer is None and self._websocket is not None:
            self._writer = asyncio.ensure_future(self._write(self._websocket))

    async def _upgrade_from_polling(self, ws: Any) -> bool:
        """The probe exchange (PING probe -> PONG probe, then UPGRADE); False if it fails.

        Each step is bounded by `ping_timeout`: a client that opens the upgrade
        WebSocket and goes silent must not hold it for longer than a dead client.
        """
        self.upgrading = True  # hold packet sends during the upgrade
        try:
            async with asyncio.timeout(self.server.ping_timeout):
                probe = eio_packet.Packet(encoded_packet=await self._receive(ws))
                if probe.packet_type != eio_packet.PING or probe.data != "probe":
                    return False
                await ws.send(eio_packet.Packet(eio_packet.PONG, data="probe").encode())
                self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the long-poll
                upgrade = eio_packet.Packet(encoded_packet=await self._receive(ws))
                if upgrade.packet_type != eio_packet.UPGRADE:
                    return False
        except (OSError, ValueError, TimeoutError):
            return False
        finally:
            self.upgrading = False
        if self.closed:
            return False
        self.upgraded = True
        return True

    async def _receive(self, ws: Any) -> Any:
        data = await ws.wait()
        if data and len(data) > self.server.max_http_buffer_size:
            raise ValueError("packet is too large")
        return data

    async def _read(self, ws: Any) -> None:
        while not self.closed:
            try:
                data = await self._receive(ws)
            except ValueError as error:  # over the size limit: counted and logged
                self.ws_refused("oversize", str(error))
                return
            except OSError:
                return  # closed, refused or broken: the caller closes the socket
            if data is None:
                return
            try:
                if isinstance(data, str) and data[0] == MESSAGE_TYPE:
                    await self._message(data[1:])
                    continue
                await self.receive(eio_packet.Packet(encoded_packet=data))
            except eio_exceptions.UnknownPacketError:
                continue
            except eio_exceptions.SocketIsClosedError:
                return
            except Exception:
                # As upstream: one bad packet is logged and the connection goes on.
                log.exception("engine.io receive error", extra={"event": "engine.receive_error"})

    async def _message(self, data: str) -> None:
        """A text MESSAGE packet's payload, to the server's `message` handler (the
        Socket.IO layer). What upstream's `receive` does for it, less the
        per-packet work that does not apply: an Engine.IO `Packet` whose decode
        first tries the payload as JSON (a Socket.IO packet never is: a failed
        parse and an exception per message), a log call, and a closure built
        per call in the server's `_trigger_event`."""
        handler = self.server.handlers.get("message")
        if handler is None:
            return
        try:
            await handler(self.sid, data)
        except Exception:
            # As upstream's `_trigger_event`: logged, and the connection goes on.
            log.exception("message handler error", extra={"event": "engine.handler_error"})

    async def _write(self, ws: Any) -> None:
        """Send what is queued, then end; at the release (`None` queued), or when
        the peer is gone, close the WebSocket and stay the writer, so none other
        starts."""
        try:
            while not self.queue.empty():
                packets = self._take_queued()
                if not packets:  # released
                    break
                self._sending = True
                # Frames taken before these packets go first. The pass-end flush is
                # scheduled before any put can start this writer, so this is a guard.
                self.flush_frames()
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

    # --- the WebSocket below aiohttp (`server.net.ws_transport`) ---------------------

    def attach_websocket(self, conn: WebSocketConnection, handshake: bytes) -> None:
        """`conn` took this socket's WebSocket request from aiohttp; `handshake`
        is the 101 response still to send. A new connection uses it at once (the
        101 and the OPEN packet go out in one write); a polling one first does
        the probe exchange (PING probe -> PONG probe, then UPGRADE), each step
        within `ping_timeout`."""
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
            self._close_soon(self.server.reason.TRANSPORT_CLOSE, abort=True)

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
            log.exception("engine.io receive error", extra={"event": "engine.receive_error"})
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
        """One packet, as `_read` handles it on aiohttp's WebSocket."""
        try:
            if isinstance(data, str) and data[0] == MESSAGE_TYPE:
                await self._message(data[1:])
                return
            await self.receive(eio_packet.Packet(encoded_packet=data))
        except (eio_exceptions.UnknownPacketError, eio_exceptions.SocketIsClosedError):
            return
        except Exception:
            log.exception("engine.io receive error", extra={"event": "engine.receive_error"})

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
            self.queue.put_nowait(eio_packet.Packet(eio_packet.NOOP))  # ends the long-poll
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
        hook = getattr(self.server, "reject_hook", None)
        if hook is not None:
            hook(reason, self.sid, detail)

    def ws_writable(self, conn: WebSocketConnection) -> None:
        if conn is self._conn and self._websocket is conn:
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
        self._direct = self._direct_transport = self._frames = None
        self._close_soon(self.server.reason.TRANSPORT_CLOSE, abort=True)

    def _drain_to_websocket(self) -> None:
        """Send what is queued to the WebSocket, in order (with the frames of this
        loop pass: one write when it ends), while the transport takes it;
        `ws_writable` calls again when it has drained. At the release (`None`
        queued) the WebSocket closes after what came before it."""
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
                    self.flush_frames()
                    conn.close()
                    return
                for pkt in packets:
                    encoded = pkt.encode()
                    if isinstance(encoded, str):
                        self._send_raw(text_frame(encoded.encode()))
                    else:
                        self._send_raw(frame(OP_BINARY, encoded))
                # Written per batch, so the transport can say it is full
                # (`write_paused`) before the whole queue is turned into frames.
                self.flush_frames()
        finally:
            self._draining = False


class ReleasingSockets(dict[str, Any]):
    """`IofleetEngine.sockets`: adopts each socket python-engineio registers as a
    `ReleasingSocket` (upstream builds them as `AsyncSocket` with no factory hook)."""

    def __setitem__(self, sid: str, socket: Any) -> None:
        if type(socket) is AsyncSocket:
            # Same layout, more methods: ReleasingSocket adds no instance state of its
            # own beyond class-level defaults, so adopting is safe before first use.
            socket.__class__ = ReleasingSocket
        super().__setitem__(sid, socket)
