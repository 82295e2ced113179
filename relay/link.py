"""One link: this region's relay to a far region's Redis.

The relay publishes into the far Redis exactly as a far server would, so the far
servers deliver (and, with recovery, stream) the message as a local emit. The link
listens on the far Redis to the far relay's interest changes (which room channels
the far region's servers subscribe) and to its own reply channel (fleet queries).

While the far Redis cannot be reached (the path, its Redis, the region gone) the
link holds what it should forward in an ordered outbox bounded in count and age
(`IOFLEET_RELAY_OUTBOX_MESSAGES`, `_SECONDS`): beyond, the oldest is dropped and
counted. When the link is back, the outbox goes out first, in order, then live
traffic behind it. The far region's interest stays as last known meanwhile.

A far Redis Cluster (`redis+cluster://`) is written as its servers write it
(`relay.layout`): SPUBLISH, the recovery script as `SHARDED_EMIT_SCRIPT` in the
channel's slot, each message sent to the master owning its channel's slot. The
far relay's interest changes and the replies to this link are sharded channels
there (`ShardedSubscriber`). The far region's interest (its channel names) is kept
under this region's names, so a room message is matched by its channel alone.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import orjson
from redis import asyncio as aioredis
from redis.asyncio.connection import AbstractConnection as Connection

from relay.guard import GUARDED_EMIT_SCRIPT, crossed_key
from relay.layout import RegionLayout
from relay.metrics import RelayMetrics
from relay.settings import Peer, Settings
from relay.wire import ORIGIN, Addressee, Channels, Forward, Members, interest_change
from server.core.jsonlog import OncePerBurst
from server.net.redis_topology import RedisClient, Subscriber, parse_redis_url
from server.sio.cluster.fanout import OUTBOX_RESUBSCRIBE_GRACE_SECONDS
from server.sio.cluster.fleet_query import QUERY_TIMEOUT_SECONDS, PendingQuery, SocketInfo
from server.sio.cluster.recovery import STREAM_SUFFIX, stream_id

log = logging.getLogger("iofleet.relay.link")

LinkState = Literal["connecting", "up", "down"]
# A far command (publish batch, ping) that takes longer than this means the link is down.
LINK_TIMEOUT_SECONDS = 2.0
# Reconnect backoff, capped low: the first delivery after a link returns is what a
# user notices, and a retry against a path that is down costs one refused connect.
BACKOFF_START, BACKOFF_CAP = 0.1, 0.5
# An idle link pings the far Redis this often, so a dead path shows before traffic.
IDLE_PING_SECONDS = 1.0
# Messages per pipelined publish: one round trip across the link carries a burst.
SEND_BATCH = 256
# Messages on the wire to the far Redis, not yet answered: a 70 ms link carries
# several batches at once (at 5,000 messages/s, 350 are in flight one way).
SEND_WINDOW = 4096
# After the far Redis restarted: the far servers' listeners retry at most every
# LISTEN_BACKOFF_CAP and subscribe within the fan-out's own outbox grace; the far
# relay reads its region's interest within an interest period of that.
FAR_RESTART_GRACE_SECONDS = OUTBOX_RESUBSCRIBE_GRACE_SECONDS + 0.2
# A relayed fleet query must answer the asking server before its own timeout.
QUERY_WAIT_SECONDS = QUERY_TIMEOUT_SECONDS - 0.5


class PeerLink:
    """Forwarding to one far region (`peer`), from the relay of region `near`."""

    def __init__(
        self, near: str, peer: Peer, channels: Channels, settings: Settings, metrics: RelayMetrics
    ) -> None:
        self.near = near
        self.name = peer.region
        self.endpoint = parse_redis_url(peer.redis_url)
        self.channels = channels
        self.settings = settings
        self.metrics = metrics
        self.stream_key = f"{channels.base}{STREAM_SUFFIX}"
        self.crossed_key = crossed_key(self.stream_key, near)  # `relay.guard`
        self.layout = RegionLayout.of(channels.base, self.endpoint, settings.recovery)
        self.near_layout = RegionLayout.of(
            channels.base, parse_redis_url(settings.redis_url), settings.recovery
        )
        self.reply_channel = channels.reply(f"relay-{near}")
        # The far region's rooms (under this region's names) and nodes.
        self.interest = Members(channels)
        self.outbox: deque[Forward] = deque()
        self.state: LinkState = "connecting"
        self.since = time.monotonic()  # in this state since
        self.listening = False
        self.publishing = False
        self.last_delivery: float | None = None  # monotonic time of the last batch taken
        self._wake = asyncio.Event()  # the outbox got a message
        self._back = asyncio.Event()  # the far Redis listens again
        self._up = asyncio.Event()  # set while the state is "up"
        self._failed = False
        self._far_run_id: str | None = None  # the far Redis's INFO run_id, once read
        self._resume_at = 0.0  # the outbox waits until then (the far Redis restarted)
        self._pending: dict[str, PendingQuery] = {}
        self._client: RedisClient | None = None
        self.on_interest: Callable[[], None] = lambda: None  # the far interest changed
        self._in_flight = 0  # messages at the outbox's head sent, their replies not yet in
        self.holding = False  # a catch-up is due: nothing more leaves (`relay.catchup`)
        # Per near stream: the live streamed ids up to here are in the catch-up.
        self._skip_upto: dict[str | None, tuple[int, int]] = {}
        self.last_catchup: dict[str, Any] | None = None
        self._log = OncePerBurst(window=10.0)
        self._drop_log = OncePerBurst(window=10.0)
        for gauge in (metrics.link_up, metrics.held, metrics.lag, metrics.far_rooms):
            gauge.labels(link=self.name).set(0)

    # --- what the relay calls ------------------------------------------------------

    def interested(self, channel: bytes) -> bool:
        return channel in self.interest.rooms

    def serves(self, target: Addressee) -> bool:
        """The far region announced the node `target` names."""
        return self.interest.has(target)

    def for_far(self, forward: Forward, message: dict[str, Any]) -> Forward:
        """`forward` on the channel the far region's servers would publish it on: the
        same name when both regions use one layout, else the far layout's (a Cluster
        with recovery tags its names, `relay.layout`)."""
        if self.layout.keys == self.near_layout.keys:
            return forward
        return forward._replace(channel=self.layout.channel_of(message, forward.streamed))

    def send(self, forward: Forward) -> None:
        """Queue one message behind the others (O(1)); the sender task takes it."""
        if self._skip_upto and forward.offset is not None:
            mark = self._skip_upto.get(forward.stream)
            if mark is not None:
                if _at_or_below(forward, mark):
                    return  # heard live, and already in the catch-up
                del self._skip_upto[forward.stream]  # stream order: the rest are newer
        limit = self.settings.outbox_messages
        if limit == 0 and self.state != "up":
            self._dropped("overflow", 1)
            return
        if limit and len(self.outbox) >= limit:
            self.outbox.popleft()
            self._dropped("overflow", 1)
        self.outbox.append(forward)
        self._wake.set()

    def status(self) -> dict[str, Any]:
        """What `/admin/status` shows of this link."""
        now = time.monotonic()
        return {
            "link": f"{self.near}->{self.name}",
            "region": self.name,
            "redis": str(self.endpoint),
            "state": self.state,
            "state_s": round(now - self.since, 3),
            "held": len(self.outbox),
            "lag_s": round(self.lag(now), 3),
            "far_rooms": len(self.interest.rooms),
            "far_nodes": len(self.interest.nodes),
            "catchup": self.last_catchup,
        }

    def lag(self, now: float) -> float:
        return now - self.outbox[0].at if self.outbox else 0.0

    # --- a catch-up (`relay.catchup`) --------------------------------------------------

    def hold(self) -> None:
        """Send nothing more until `resume`: what is heard live waits behind the catch-up."""
        self.holding = True

    def resume(
        self, caught: list[Forward], upto: Mapping[str | None, str | None], unkept: int = 0
    ) -> None:
        """Put the caught-up messages ahead of what waits (after what is on the wire),
        drop the waiting streamed ones at or below their near stream's mark in `upto`
        (they are in `caught`), and send again. `unkept`: older ones beyond the
        outbox's bound (counted dropped)."""
        self._dropped("overflow", unkept)
        marks: dict[str | None, tuple[int, int]] = {}
        for stream, mark in upto.items():
            if mark is not None and (parsed := stream_id(mark)) is not None:
                marks[stream] = parsed
        on_wire = list(itertools.islice(self.outbox, 0, self._in_flight))
        waiting = [
            forward
            for forward in itertools.islice(self.outbox, self._in_flight, None)
            if not _at_or_below(forward, marks.get(forward.stream))
        ]
        limit = self.settings.outbox_messages
        if limit and len(on_wire) + len(caught) + len(waiting) > limit:
            over = min(len(caught), len(on_wire) + len(caught) + len(waiting) - limit)
            self._dropped("overflow", over)
            caught = caught[over:]
        self.outbox.clear()
        self.outbox.extend(on_wire + caught + waiting)
        self._skip_upto = marks
        self.holding = False
        self._wake.set()
        self._gauges()

    def abandon(self) -> None:
        """This relay stands by before its catch-up was done: what waits is dropped
        (counted, `handover`); the relay taking over catches it up from the stream."""
        if not self.holding:
            return
        waiting = len(self.outbox) - self._in_flight
        for _ in range(waiting):
            self.outbox.pop()
        self._dropped("handover", waiting)
        self.holding = False
        self._gauges()

    async def wait_up(self) -> None:
        await self._up.wait()

    async def crossed(self, record: str) -> str | None:
        """The newest near stream id the far Redis took from this region into the far
        stream of `record` (`relay.guard`, `records`)."""
        took = await asyncio.wait_for(self._far().get(record), LINK_TIMEOUT_SECONDS)
        return took.decode() if isinstance(took, bytes) else took

    def records(self, near_stream: str, namespaces: Iterable[str]) -> set[str]:
        """The far records of what crossed from `near_stream` (its entries of
        `namespaces`): one per far stream they land in."""
        return {self.record_key(near_stream, self.layout.keys.stream(ns)) for ns in namespaces}

    def record_key(self, near_stream: str | None, far_stream: str) -> str:
        """The far record (`relay.guard.crossed_key`) of what crossed from `near_stream`
        into `far_stream`: named by the near stream too only where several near streams
        land in one far stream (a clustered region into one Redis)."""
        several = self.near_layout.keys.sharded and not self.layout.keys.sharded
        return crossed_key(far_stream, self.near, near_stream if several else None)

    def record_of(self, forward: Forward) -> str:
        """The far record a streamed `forward` is guarded by, in its far stream's slot."""
        if not (self.layout.keys.sharded or self.near_layout.keys.sharded):
            return self.crossed_key  # one stream each side
        return self.record_key(forward.stream, self.layout.stream_of(forward.channel))

    async def run(self) -> None:
        await asyncio.gather(self._listen(), self._send_loop())

    async def query(self, request: dict[str, Any]) -> list[list[Any]]:
        """Ask the far region's servers a fleet query; their sockets, as wire items
        (none when the link is down: the asking server must not wait on it)."""
        if self.state != "up":
            return []
        request_id = str(request["id"])
        pending = self._pending[request_id] = PendingQuery()
        outgoing = {**request, "reply_to": self.reply_channel, ORIGIN: self.near}
        try:
            receivers = await asyncio.wait_for(
                self.endpoint.publish(self._far(), self.channels.query, orjson.dumps(outgoing)),
                LINK_TIMEOUT_SECONDS,
            )
            pending.expect(receivers)  # every far server, and the far relay (it answers [])
            await asyncio.wait_for(pending.complete.wait(), QUERY_WAIT_SECONDS)
        except (OSError, TimeoutError, aioredis.RedisError) as error:
            self._warn("relay: a fleet query got part of the far region only", error)
        finally:
            del self._pending[request_id]
        return [info.as_wire() for info in pending.sockets()]

    # --- the far Redis ------------------------------------------------------------

    def _far(self) -> RedisClient:
        if self._client is None:
            self._client = self.endpoint.client(
                f"iofleet-relay-{self.near}-to-{self.name}",
                socket_connect_timeout=LINK_TIMEOUT_SECONDS,
                socket_timeout=LINK_TIMEOUT_SECONDS,
                driver_info=None,  # no CLIENT SETINFO: one round trip less per connect
            )
        return self._client

    async def _listen(self) -> None:
        """Subscribe the far relay's interest changes and this link's replies; keep
        the far region's interest set current. On a far Cluster both are sharded
        channels (SSUBSCRIBE on the masters owning their slots)."""
        backoff = BACKOFF_START
        while True:
            subscriber: Subscriber | None = None
            try:
                subscriber = self.endpoint.subscriber(
                    f"iofleet-relay-{self.near}-from-{self.name}",
                    socket_connect_timeout=LINK_TIMEOUT_SECONDS,
                    socket_keepalive=True,
                    health_check_interval=IDLE_PING_SECONDS,
                    driver_info=None,  # no CLIENT SETINFO: one round trip less
                )
                client = self._far()
                if not self.layout.cluster:  # a Cluster's masters: `ClusterSender` waits
                    await self._note_restart(single(client))
                await subscriber.subscribe(self.channels.interest_changes, self.reply_channel)
                await self._read_interest(client)  # after SUBSCRIBE: no change is missed
                # A connection ready for a catch-up's or a query's first read: its setup
                # costs round trips across the link (a standby's catch-up waited 0.58 s).
                await asyncio.wait_for(client.ping(), LINK_TIMEOUT_SECONDS)
                self._set(listening=True)
                backoff = BACKOFF_START
                async for message in subscriber.listen():
                    await self._heard(client, message)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure here means: reconnect
                self._set(listening=False)
                self._warn("relay: the far region's Redis is unreachable; retrying", error)
            finally:
                if subscriber is not None:
                    await close_quietly(subscriber.aclose())
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _note_restart(self, client: aioredis.Redis) -> None:
        """A far Redis that restarted (a new run id) has no subscriber yet: its servers
        resubscribe within their listener backoff, and what is published before
        reaches nobody. The outbox waits `FAR_RESTART_GRACE_SECONDS` then."""
        info = await asyncio.wait_for(client.info("server"), LINK_TIMEOUT_SECONDS)
        run_id = str(info.get("run_id"))
        if self._far_run_id is not None and run_id != self._far_run_id:
            self._resume_at = time.monotonic() + FAR_RESTART_GRACE_SECONDS
            log.info(
                "relay: the far region's Redis restarted; the outbox waits for its servers",
                extra={"event": "relay.far_restarted", "link": self.name},
            )
        self._far_run_id = run_id

    async def _read_interest(self, client: RedisClient) -> None:
        members = await asyncio.wait_for(
            client.smembers(self.channels.interest_key),  # type: ignore[arg-type,unused-ignore]
            LINK_TIMEOUT_SECONDS,
        )
        names = (self._near_name(bytes(member)) for member in members)  # type: ignore[arg-type,unused-ignore]
        self.interest.replace(name for name in names if name is not None)
        self.metrics.far_rooms.labels(link=self.name).set(len(self.interest.rooms))
        self.on_interest()

    def _near_name(self, member: bytes) -> bytes | None:
        """A far region's member under this region's name: a room channel in this
        layout (None if it has none), a node's heartbeat channel as it is."""
        if not member.startswith(self.channels.room_prefix.encode()):
            return member
        return self.near_layout.near_name(member, self.layout)

    async def _heard(self, client: RedisClient, message: dict[str, Any]) -> None:
        if message.get("type") not in ("message", "smessage"):
            return
        channel, data = message["channel"], message["data"]
        if channel == self.reply_channel.encode():
            self._take_reply(data)
            return
        change = interest_change(data)
        if change is None:
            self.metrics.bad_message(f"an interest change from {self.name}: {data[:80]!r}")
            return
        sign, far_member = change
        member = self._near_name(far_member)
        if sign == "*":
            await self._read_interest(client)
        elif member is None:
            pass  # no such channel here (a namespace's emits cross on the shared channel)
        elif sign == "+":
            self.interest.add(member)
        else:
            self.interest.discard(member)
        self.metrics.far_rooms.labels(link=self.name).set(len(self.interest.rooms))
        self.on_interest()

    def _take_reply(self, data: bytes) -> None:
        try:
            reply = orjson.loads(data)
            pending = self._pending.get(str(reply["id"]))
            sockets = [SocketInfo.from_wire(item) for item in reply["sockets"]]
        except (ValueError, KeyError, TypeError):
            self.metrics.bad_message(f"a fleet query reply from {self.name}")
            return
        if pending is not None:  # else: late, after its timeout
            pending.add(sockets)

    # --- sending, in order, pipelined across the link ---------------------------------

    async def _send_loop(self) -> None:
        """One connection to the far Redis at a time; on it a writer keeps up to
        `SEND_WINDOW` messages in flight and a reader takes the replies in order
        (a 70 ms link must not cost a round trip per batch). A message leaves the
        outbox when its reply came; after a failure everything unanswered is sent
        again on the next connection: the far region may see a message twice
        then, never miss one or get it out of order."""
        if self.layout.cluster:
            from relay.sharded import ClusterSender  # noqa: PLC0415 (it imports this module)

            await ClusterSender(self).run()
            return
        backoff = BACKOFF_START
        while True:
            connection: Connection = single(self._far()).connection_pool.make_connection()  # type: ignore[no-untyped-call]
            try:
                sha = await asyncio.wait_for(self._open(connection), LINK_TIMEOUT_SECONDS * 2)
                self._set(publishing=True)
                backoff = BACKOFF_START
                await self._pump(connection, sha)
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                self._set(publishing=False)
                self._warn("relay: publishing to the far region failed; holding", error)
            finally:
                self._in_flight = 0
                await close_quietly(connection.disconnect())
            self._back.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._back.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _open(self, connection: Connection) -> str:
        """Connect, and load the guarded recovery script there (a restarted Redis has an
        empty script cache); its sha."""
        await connection.connect()  # type: ignore[no-untyped-call]
        await connection.send_command("SCRIPT", "LOAD", GUARDED_EMIT_SCRIPT)
        sha = await connection.read_response()
        return sha.decode() if isinstance(sha, bytes) else str(sha)

    async def _pump(self, connection: Connection, sha: str) -> None:
        """Write and read until one of them fails; its error is raised."""
        replies: asyncio.Queue[int] = asyncio.Queue()  # batch sizes sent (0: a ping)
        loop = asyncio.get_running_loop()
        tasks = {
            loop.create_task(self._write(connection, sha, replies)),
            loop.create_task(self._read(connection, replies)),
        }
        try:
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_EXCEPTION)
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for task in done:
            task.result()  # raises what ended it

    async def _write(self, connection: Connection, sha: str, replies: asyncio.Queue[int]) -> None:
        window_ms = int(self.settings.recovery_window_seconds * 1000)
        while True:
            if self.holding or self._in_flight >= min(len(self.outbox), SEND_WINDOW):
                self._wake.clear()
                try:
                    await asyncio.wait_for(self._wake.wait(), IDLE_PING_SECONDS)
                except TimeoutError:
                    if not self._in_flight:  # idle: a dead path shows before traffic does
                        await connection.send_packed_command(connection.pack_command("PING"))
                        replies.put_nowait(0)
                continue
            if not self._in_flight:
                self._expire()  # only what is not on the wire (the link was down)
            stop = min(len(self.outbox), self._in_flight + SEND_BATCH, SEND_WINDOW)
            batch = list(itertools.islice(self.outbox, self._in_flight, stop))
            if not batch:
                continue
            commands: list[tuple[str | bytes | int, ...]] = []
            for forward in batch:
                if forward.offset is not None and self.settings.recovery:
                    record = self.record_of(forward)
                    commands.append(
                        ("EVALSHA", sha, 2, self.stream_key, record, forward.channel,
                         forward.message, self.settings.recovery_max_messages, window_ms,
                         forward.offset)
                    )  # fmt: skip
                else:
                    commands.append(("PUBLISH", forward.channel, forward.message))
            await connection.send_packed_command(connection.pack_commands(commands))
            self._in_flight += len(batch)
            replies.put_nowait(len(batch))

    async def _read(self, connection: Connection, replies: asyncio.Queue[int]) -> None:
        while True:
            size = await replies.get()
            refused = 0
            for _ in range(max(size, 1)):
                try:
                    reply = await connection.read_response(timeout=LINK_TIMEOUT_SECONDS)
                    refused += reply is None  # the guard: it crossed already (`relay.guard`)
                except aioredis.ResponseError as error:
                    if "NOSCRIPT" in str(error):
                        raise  # the far Redis lost its scripts: a new connection loads it
                    # This one message; the rest go on.
                    self.metrics.bad_message(f"refused by {self.name}'s Redis: {error}"[:200])
            if size == 0:
                self._set(publishing=True)
                continue
            for _ in range(size):
                forward = self.outbox.popleft()
                self.metrics.link_bytes.labels(link=self.name).inc(len(forward.message))
            self._in_flight -= size
            self.last_delivery = time.monotonic()
            self.metrics.forwarded.labels(link=self.name).inc(size - refused)
            if refused:
                self.metrics.refused.labels(link=self.name).inc(refused)
            self._set(publishing=True)

    def _expire(self) -> None:
        oldest = time.monotonic() - self.settings.outbox_seconds
        expired = 0
        while self.outbox and self.outbox[0].at < oldest:
            self.outbox.popleft()
            expired += 1
        self._dropped("expired", expired)

    def drop_all(self) -> None:
        """Shutdown: what is still held is lost (counted)."""
        self._dropped("shutdown", len(self.outbox))
        self.outbox.clear()

    # --- state and accounting ---------------------------------------------------------

    def _set(self, listening: bool | None = None, publishing: bool | None = None) -> None:
        if listening is not None:
            self.listening = listening
        if publishing is not None:
            self.publishing = publishing
        if listening is False or publishing is False:
            self._failed = True
        state: LinkState = "up" if self.listening and self.publishing else "down"
        if state == "down" and not self._failed:
            state = "connecting"  # still coming up: neither side failed yet
        if state != self.state:
            if self.state == "up":
                self.metrics.link_failures.labels(link=self.name).inc()
            log.info(
                "relay link %s",
                state,
                extra={"event": f"relay.link_{state}", "link": self.name, "held": len(self.outbox)},
            )
            self.state, self.since = state, time.monotonic()
            self._log.reset()
        if state == "up":
            self._up.set()
        else:
            self._up.clear()
        if listening:
            self._back.set()  # a sender backing off tries again at once
        self.metrics.link_up.labels(link=self.name).set(1 if state == "up" else 0)
        self._gauges()

    def _gauges(self) -> None:
        self.metrics.held.labels(link=self.name).set(len(self.outbox))
        self.metrics.lag.labels(link=self.name).set(self.lag(time.monotonic()))

    def _dropped(self, reason: str, count: int) -> None:
        if not count:
            return
        self.metrics.dropped.labels(link=self.name, reason=reason).inc(count)
        if self._drop_log.should_log():
            log.error(
                "relay: messages for the far region dropped; it misses them",
                extra={
                    "event": "relay.dropped",
                    "link": self.name,
                    "reason": reason,
                    "count": count,
                    "suppressed": self._drop_log.take_suppressed(),
                },
            )

    def _warn(self, what: str, error: BaseException) -> None:
        if self._log.should_log():
            log.warning(
                what,
                extra={
                    "event": "relay.link_failed",
                    "link": self.name,
                    "reason": f"{type(error).__name__}: {error}"[:200],
                    "held": len(self.outbox),
                    "suppressed": self._log.take_suppressed(),
                },
            )


def _at_or_below(forward: Forward, mark: tuple[int, int] | None) -> bool:
    """Whether `forward` came through the near stream at or before the id `mark`."""
    offset = stream_id(forward.offset) if forward.offset is not None else None
    return mark is not None and offset is not None and offset <= mark


async def close_quietly(closing: Any, timeout: float = 1.0) -> None:
    """Close a link to a Redis that may be gone: bounded, failures ignored (logged above)."""
    with contextlib.suppress(OSError, TimeoutError, aioredis.RedisError):
        await asyncio.wait_for(closing, timeout)


def single(client: RedisClient) -> aioredis.Redis:
    """The client of one Redis: the paths a Cluster takes elsewhere (`relay.sharded`)."""
    if not isinstance(client, aioredis.Redis):
        raise TypeError("a one-Redis path was given a Cluster client")
    return client
