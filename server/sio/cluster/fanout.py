"""Cross-node fan-out through Redis pub/sub.

Extends python-socketio's `AsyncRedisManager` at its hooks (STYLE.md #5) with
what production needs and the library leaves out: a dead Redis never blocks an
emit for long or crashes the node, every lost publish is counted and logged once
per burst, the listener reconnects with capped backoff and reports whether it
is subscribed.

Per-room routing: an emit to one application room is published on that room's
channel (`<channel>#room#<namespace>#<room>`), and a node subscribes to a room's
channel only while it has a member in it (the room index, `server.sio.rooms`,
says when a room gets its first member here or loses its last), so a node with
no member in a room receives none of its bytes. Everything else stays on the shared channel
every node hears: emits to a whole namespace, to several rooms at once, to a
sid's own room (a name of the sid form, `server.eio.engine.SID_PATTERN`: an app room
named like one is routed the same way, still correctly), acks returning to
their node, and remote joins, leaves and disconnects.

Publishes Redis does not take go to a bounded outbox (`Outbox`: at most
`IOFLEET_FANOUT_OUTBOX_MESSAGES` messages, none older than
`IOFLEET_FANOUT_OUTBOX_SECONDS`), which one task drains in order once this
node's listener is subscribed again (plus `OUTBOX_RESUBSCRIBE_GRACE_SECONDS`,
so the other nodes, retrying on the same backoff, have resubscribed too: pub/sub
keeps nothing for a node not yet listening). While it holds anything, new
publishes queue behind it, so other nodes see one node's messages in order.
What overflows or expires is counted (`iofleet_fanout_dropped_total{reason}`)
and logged once per burst.

A Redis outage degrades the fan-out (counted, logged, shown in `/admin/status`
and `iofleet_fanout_up`) but never the node's readiness: every node shares the
Redis, and a balancer that took them all out would refuse every client while
each node can still serve its own rooms. Shutdown never waits on a Redis that is
gone.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable
from typing import Any, NamedTuple

import socketio
from redis import asyncio as aioredis

from server.core.jsonlog import OncePerBurst
from server.core.metrics import Metrics
from server.core.tasks import cancel_and_wait
from server.eio.engine import SID_PATTERN
from server.net.redis_topology import RedisClient, Subscriber, parse_redis_url
from server.sio.broadcast import BroadcastEmit
from server.sio.cluster.fleet_query import (
    QUERY_TIMEOUT_SECONDS,
    PendingQuery,
    SocketInfo,
    local_sockets,
)
from server.sio.rooms import RoomIndex

log = logging.getLogger("iofleet.fanout")

# A publish must not hold an event handler for long while Redis is unreachable.
PUBLISH_TIMEOUT_SECONDS = 2.0
# The listener's reconnect backoff: 0.1 s doubling up to 0.5 s, so the fan-out
# resumes within about half a second of Redis coming back (the library's cap is
# 60 s). A retry against a Redis that is down costs one refused connect.
LISTEN_BACKOFF_START = 0.1
LISTEN_BACKOFF_CAP = 0.5
ROOM_CHANNEL_INFIX = "#room#"
# The listener checks itself: every HEARTBEAT_SECONDS the node publishes on a
# channel only it subscribes to. Redis answering 0 receivers (it dropped the
# subscription, e.g. `CLIENT KILL TYPE pubsub` or the output-buffer limit), or
# DEAF_AFTER_HEARTBEATS heartbeats Redis took but the listener never heard (a
# connection gone quiet), means the listener is deaf: it is reset and resubscribes.
# A listener that went quiet while Redis still counts it as subscribed is this
# node's fault alone: the node reports not-ready (`deaf_since`) until it hears its
# heartbeat again. Redis dropping the subscription (0 receivers) is not: it happens
# to every node at once after a Redis restart, and readiness must not empty the
# balancer then (a Redis outage leaves nodes ready, `server.node.state.Node`).
HEARTBEAT_SECONDS = 1.0
DEAF_AFTER_HEARTBEATS = 3
HEARTBEAT_INFIX = "#heartbeat#"
# Fleet queries (`server.sio.cluster.fleet_query`): requests every node hears, replies to the asker.
QUERY_SUFFIX = "#query"
REPLY_INFIX = "#reply#"
# After the listener resubscribes, the outbox waits this long before draining:
# the other nodes' listeners retry every LISTEN_BACKOFF_CAP at most, and a
# message published before they resubscribe reaches nobody there.
OUTBOX_RESUBSCRIBE_GRACE_SECONDS = LISTEN_BACKOFF_CAP + 0.2
# Between two failed attempts to publish the outbox's head while subscribed.
OUTBOX_RETRY_SECONDS = 0.1
# Publishes leave in the order this node made them, pipelined: one batch in flight,
# and what queues meanwhile goes in the next one. A burst of emits costs a round
# trip per batch instead of a pooled connection per emit (redis-py's async pool
# refuses a 101st concurrent command with "Too many connections", and concurrent
# commands on several connections reach Redis in any order).
PUBLISH_BATCH = 256


def heartbeat_channel_name(channel: str, node_id: str, host_id: str) -> str:
    """The channel only this node subscribes (its listener's self-check). It names the
    node's `IOFLEET_NODE_ID` (its sids' prefix) and its host id (its acks' address),
    so whoever reads `PUBSUB CHANNELS` (the inter-region relay) learns both."""
    return f"{channel}{HEARTBEAT_INFIX}{node_id}#{host_id}"


def heartbeat_channel_owner(name: str, channel: str) -> tuple[str, str] | None:
    """(node id, host id) of a `heartbeat_channel_name`, or None if `name` is not one."""
    prefix = f"{channel}{HEARTBEAT_INFIX}"
    if not name.startswith(prefix):
        return None
    node_id, sep, host_id = name[len(prefix) :].rpartition("#")
    return (node_id, host_id) if sep and node_id and host_id else None


def room_channel_name(channel: str, namespace: str, room: str) -> str:
    """The pub/sub channel of `room` in `namespace` (`server.sio.cluster.recovery` tags it
    on a Redis Cluster)."""
    return f"{channel}{ROOM_CHANNEL_INFIX}{namespace}#{room}"


def routes(room: object) -> bool:
    """Whether emits to `room` travel on the room's own channel."""
    return isinstance(room, str) and not SID_PATTERN.match(room)


def routed_room(data: dict[str, Any]) -> tuple[str, str] | None:
    """`(namespace, room)` when the fan-out message `data` travels on that room's own
    channel, else None (the shared channel). The one rule: the servers route by it
    and the relay (`relay.layout`) finds a far region's channel by it."""
    room = data.get("room")
    if data.get("method") == "emit" and isinstance(room, str) and routes(room):
        return str(data.get("namespace") or "/"), room
    return None


class QueuedPublish(NamedTuple):
    """One publish waiting for the sender (`FanoutManager._send_queued`)."""

    channel: str
    message: str
    sent: asyncio.Future[int | None]  # the receivers Redis counted; None: outboxed
    streamed: bool = False  # through `server.sio.cluster.recovery`'s emit script
    outbox_message: str | None = None  # what the outbox sends instead, if not `message`


class Outbox:
    """Messages (channel, payload) waiting for Redis, oldest first, bounded in
    count and age. Adding to a full outbox drops its oldest message."""

    def __init__(self, max_messages: int, max_seconds: float) -> None:
        self.max_messages = max_messages
        self.max_seconds = max_seconds
        self._items: deque[tuple[float, str, str]] = deque()

    def __len__(self) -> int:
        return len(self._items)

    def add(self, channel: str, payload: str, now: float) -> int:
        """Queue a message; returns how many it dropped: the oldest when full, or
        this one when the outbox is off (`max_messages` 0)."""
        if self.max_messages == 0:
            return 1
        dropped = 0
        if len(self._items) >= self.max_messages:
            self._items.popleft()
            dropped = 1
        self._items.append((now, channel, payload))
        return dropped

    def expire(self, now: float) -> int:
        """Drop messages older than `max_seconds`; returns how many."""
        dropped = 0
        while self._items and now - self._items[0][0] > self.max_seconds:
            self._items.popleft()
            dropped += 1
        return dropped

    def head(self) -> tuple[str, str]:
        _, channel, payload = self._items[0]
        return channel, payload

    def pop_head(self) -> None:
        self._items.popleft()

    def clear(self) -> int:
        count = len(self._items)
        self._items.clear()
        return count


class FanoutManager(RoomIndex, socketio.AsyncRedisManager, BroadcastEmit):  # type: ignore[misc]
    """Redis fan-out; what the listener (and this node's own emit) delivers locally
    goes through `BroadcastEmit` (framed once per room, `server.sio.broadcast`)."""

    name = "iofleet-redis"

    def __init__(
        self,
        url: str,
        channel: str,
        metrics: Metrics,
        outbox_messages: int = 10000,
        outbox_seconds: float = 30.0,
        node_id: str = "node",
    ) -> None:
        super().__init__(url, channel=channel, logger=log)
        # One Redis, Sentinel or a Cluster (sharded pub/sub): server.net.redis_topology.
        self.endpoint = parse_redis_url(url)
        self.client_name = f"iofleet-{node_id}"  # CLIENT LIST shows which node is which
        self.metrics = metrics
        self.outbox = Outbox(outbox_messages, outbox_seconds)
        self._drainer: asyncio.Task[None] | None = None
        self._queued: deque[QueuedPublish] = deque()
        self._sender: asyncio.Task[None] | None = None
        self._drop_log = OncePerBurst(window=10.0)
        self._subscribed_event = asyncio.Event()
        self.subscribed = False
        self.tried = False  # the first subscription attempt finished, either way
        self.down_since: float | None = time.monotonic()  # not subscribed since
        self._publish_log = OncePerBurst(window=10.0)
        self._listen_log = OncePerBurst(window=10.0)
        self._close_log = OncePerBurst(window=10.0)
        self.room_prefix = f"{channel}{ROOM_CHANNEL_INFIX}"
        self.room_channels: set[str] = set()  # rooms with a member here: subscribe
        self._active_rooms: set[str] = set()  # room channels the subscriber holds
        self._room_sync: asyncio.Task[None] | None = None
        self._sync_log = OncePerBurst(window=10.0)
        self.heartbeat_channel = heartbeat_channel_name(channel, node_id, self.host_id)
        self.query_channel = f"{channel}{QUERY_SUFFIX}"
        self.reply_channel = f"{channel}{REPLY_INFIX}{self.host_id}"
        self._queries: dict[str, PendingQuery] = {}
        self._query_log = OncePerBurst(window=10.0)
        self._unheard_heartbeats = 0
        self.deaf_since: float | None = None  # heard nothing while Redis said subscribed
        self._watchdog: asyncio.Task[None] | None = None
        # Set by the library's __init__; declared for the type checker.
        self.redis: RedisClient | None
        self.pubsub: Subscriber | None

    def _redis_connect(self) -> None:
        """The library's hook: make sure both clients exist."""
        self._publisher()
        self._subscriber()
        self.connected = True

    def _publisher(self) -> RedisClient:
        # Two links: publishes get a socket timeout so they cannot hang; the
        # subscriber must block on reads indefinitely, so it gets keepalive and
        # periodic health checks instead. The publisher's pool reconnects by itself;
        # the subscriber is made anew after a failure (fresh master or slot map).
        if self.redis is None:
            self.redis = self.endpoint.client(
                f"{self.client_name}-publisher",
                socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                socket_timeout=PUBLISH_TIMEOUT_SECONDS,
            )
        return self.redis

    def _subscriber(self) -> Subscriber:
        if self.pubsub is None:
            self.pubsub = self.endpoint.subscriber(
                f"{self.client_name}-subscriber",
                socket_connect_timeout=PUBLISH_TIMEOUT_SECONDS,
                socket_keepalive=True,
                health_check_interval=10,
            )
        return self.pubsub

    def redis_away(self) -> bool:
        """Publishes go to the outbox now: the listener is down, or messages already
        wait there (a new one may not overtake them)."""
        return bool(len(self.outbox)) or not self.subscribed

    async def _publish(self, data: Any) -> Any:
        """Queue `data` for Redis; answers how many nodes' listeners got it (None
        when it went to the outbox), once its batch has been sent."""
        channel = self._channel_for(data)
        message = self.json.dumps(data)
        # Behind what already waits (order), or straight in while the listener
        # is down: Redis is gone, and trying would hold the handler up to a timeout.
        if self.redis_away():
            self._to_outbox(channel, message, time.monotonic(), "redis unavailable")
            return None
        return await asyncio.shield(self._enqueue(channel, message))  # a cancelled
        # handler does not unsend it

    def _enqueue(
        self,
        channel: str,
        message: str,
        streamed: bool = False,
        outbox_message: str | None = None,
    ) -> asyncio.Future[int | None]:
        """Queue one publish behind the others; its future answers the receivers
        Redis counted (0 for a `streamed` one: `server.sio.cluster.recovery`'s emit script), or
        None if it went to the outbox (as `outbox_message`, when given)."""
        loop = asyncio.get_running_loop()
        sent: asyncio.Future[int | None] = loop.create_future()
        self._queued.append(QueuedPublish(channel, message, sent, streamed, outbox_message))
        if self._sender is None or self._sender.done():
            self._sender = loop.create_task(self._send_queued())
        return sent

    async def _send_queued(self) -> None:
        """The one task that publishes the queue, in order, a pipelined batch at a time.
        A batch Redis does not take goes to the outbox with everything queued after it."""
        redis = self._publisher()
        while self._queued:
            batch = [self._queued.popleft() for _ in range(min(PUBLISH_BATCH, len(self._queued)))]
            # Two attempts: after Redis restarts, the pooled connection is dead and
            # only the second attempt (on a fresh connection) can get through.
            failure: Exception | None = None
            for attempt in (1, 2):
                try:
                    counts = await asyncio.wait_for(
                        self._send_batch(redis, batch), PUBLISH_TIMEOUT_SECONDS
                    )
                except aioredis.ConnectionError as error:
                    failure = error
                    if attempt == 1:
                        continue
                except (OSError, TimeoutError, aioredis.RedisError) as error:
                    failure = error
                else:
                    failure = None
                    for queued, count in zip(batch, counts, strict=True):
                        queued.sent.set_result(count)
                break
            if failure is None:
                continue
            reason = f"{type(failure).__name__}: {failure}"
            now = time.monotonic()
            waiting = [*batch, *self._queued]
            self._queued.clear()
            for queued in waiting:
                message = queued.outbox_message or queued.message
                self._to_outbox(queued.channel, message, now, reason)
                queued.sent.set_result(None)

    async def _send_batch(self, redis: RedisClient, batch: list[QueuedPublish]) -> list[int]:
        """Send one batch, in order: the receivers Redis counted for each."""
        return await self.endpoint.publish_many(redis, [(q.channel, q.message) for q in batch])

    # --- fleet queries (server.sio.cluster.fleet_query) --------------------------------------

    async def fetch_sockets(self, namespace: str, room: str | None) -> list[SocketInfo]:
        """The sockets of `namespace` in `room` on every node: this node's at once,
        the others' over Redis (what answers within QUERY_TIMEOUT_SECONDS)."""
        mine = local_sockets(self.server, namespace, room)
        if self.redis_away():
            self._query_incomplete("redis unavailable", 0, None)
            return mine
        request_id = secrets.token_hex(8)
        pending = self._queries[request_id] = PendingQuery()
        try:
            request = {
                "id": request_id,
                "reply_to": self.reply_channel,
                "namespace": namespace,
                "room": room,
            }
            receivers = await self._enqueue(self.query_channel, self.json.dumps(request))
            if receivers is None:
                self._query_incomplete("redis unavailable", 0, None)
                return mine
            pending.expect(receivers - 1)  # every node's listener but this one's
            try:
                await asyncio.wait_for(pending.complete.wait(), QUERY_TIMEOUT_SECONDS)
            except TimeoutError:
                self._query_incomplete("timeout", len(pending.replies), receivers - 1)
            return mine + pending.sockets()
        finally:
            del self._queries[request_id]

    def _answer_query(self, data: bytes) -> None:
        """Another node asks: reply with this node's sockets (queued, not awaited:
        the listener goes on)."""
        try:
            request = self.json.loads(data)
            reply_to = str(request["reply_to"])
            namespace, room = str(request["namespace"]), request["room"]
            request_id = str(request["id"])
        except (ValueError, KeyError, TypeError):
            log.warning(
                "fan-out: malformed fleet query ignored", extra={"event": "fanout.bad_query"}
            )
            return
        if reply_to == self.reply_channel:
            return  # this node's own request: it answers itself
        sockets = [info.as_wire() for info in local_sockets(self.server, namespace, room)]
        self._enqueue(reply_to, self.json.dumps({"id": request_id, "sockets": sockets}))

    def _take_reply(self, data: bytes) -> None:
        try:
            reply = self.json.loads(data)
            pending = self._queries.get(str(reply["id"]))
            sockets = [SocketInfo.from_wire(item) for item in reply["sockets"]]
        except (ValueError, KeyError, TypeError):
            log.warning(
                "fan-out: malformed fleet reply ignored", extra={"event": "fanout.bad_query"}
            )
            return
        if pending is not None:  # else: late, after its timeout
            pending.add(sockets)

    def _query_incomplete(self, reason: str, answered: int, nodes: int | None) -> None:
        if self._query_log.should_log():
            log.warning(
                "fleet query answered by part of the fleet only",
                extra={
                    "event": "fanout.query_incomplete",
                    "reason": reason,
                    "answered": answered,
                    "nodes": nodes,
                    "suppressed": self._query_log.take_suppressed(),
                },
            )

    # --- the outbox -----------------------------------------------------------------

    def _to_outbox(self, channel: str, message: str, now: float, reason: str) -> None:
        self.metrics.fanout_publish_failures.inc()
        if self._publish_log.should_log(now):
            log.error(
                "fan-out publish failed; the message waits in the outbox",
                extra={
                    "event": "fanout.publish_failed",
                    "reason": reason,
                    "suppressed": self._publish_log.take_suppressed(),
                },
            )
        self._dropped("overflow", self.outbox.add(channel, message, now), now)
        self._dropped("expired", self.outbox.expire(now), now)
        self.metrics.fanout_outbox.set(len(self.outbox))
        if len(self.outbox) and (self._drainer is None or self._drainer.done()):
            self._drainer = asyncio.get_running_loop().create_task(self._drain_outbox())

    def _dropped(self, reason: str, count: int, now: float | None = None) -> None:
        if not count:
            return
        self.metrics.fanout_dropped.labels(reason=reason).inc(count)
        if self._drop_log.should_log(now):
            log.error(
                "fan-out messages dropped from the outbox; other nodes miss them",
                extra={
                    "event": "fanout.outbox_dropped",
                    "reason": reason,
                    "count": count,
                    "suppressed": self._drop_log.take_suppressed(),
                    "max_messages": self.outbox.max_messages,
                    "max_seconds": self.outbox.max_seconds,
                },
            )

    async def _drain_outbox(self) -> None:
        """The one task that publishes the outbox, oldest first, once Redis answers."""
        redis = self._publisher()
        while len(self.outbox):
            if not self.subscribed:
                await self._subscribed_event.wait()
                await asyncio.sleep(OUTBOX_RESUBSCRIBE_GRACE_SECONDS)
                continue
            self._dropped("expired", self.outbox.expire(time.monotonic()))
            if not len(self.outbox):
                break
            channel, message = self.outbox.head()
            try:
                await asyncio.wait_for(
                    self.endpoint.publish(redis, channel, message), PUBLISH_TIMEOUT_SECONDS
                )
            except (OSError, TimeoutError, aioredis.RedisError):
                await asyncio.sleep(OUTBOX_RETRY_SECONDS)
                continue
            self.outbox.pop_head()
            self.metrics.fanout_outbox.set(len(self.outbox))
        self.metrics.fanout_outbox.set(0)
        log.info("fan-out outbox drained", extra={"event": "fanout.outbox_drained"})

    # --- per-room routing ---------------------------------------------------------

    def room_channel(self, namespace: str, room: str) -> str:
        return room_channel_name(str(self.channel), namespace, room)

    routes = staticmethod(routes)

    def _channel_for(self, data: dict[str, Any]) -> str:
        routed = routed_room(data)
        if routed is not None:
            return self.room_channel(*routed)
        return str(self.channel)

    def occupancy_channel(self, namespace: str, room: str | None) -> str | None:
        """The channel this node hears while `room` has a member here, if any."""
        return self.room_channel(namespace, room) if self.routes(room) else None  # type: ignore[arg-type]

    def on_room_occupancy(self, namespace: str, room: str | None, occupied: bool) -> None:
        # The room index (`server.sio.rooms`) calls this when a room gets its first
        # member here or loses its last.
        channel = self.occupancy_channel(namespace, room)
        if channel is None:
            return
        if occupied:
            self.room_channels.add(channel)
        else:
            self.room_channels.discard(channel)
        self._sync_rooms_soon()

    def _sync_rooms_soon(self) -> None:
        """(Un)subscribe room channels to match `room_channels`, from a task: the
        manager's room methods are synchronous. One task at a time; it loops until
        nothing changed meanwhile."""
        if self._room_sync is not None and not self._room_sync.done():
            return
        try:
            self._room_sync = asyncio.get_running_loop().create_task(self._sync_rooms())
        except RuntimeError:  # no loop (a test building the manager): the subscribe covers it
            self._room_sync = None

    async def _sync_rooms(self) -> None:
        while True:
            pubsub = self.pubsub
            if pubsub is None or not self.subscribed:
                return  # the (re)subscribe in the listener takes every room channel
            wanted = set(self.room_channels)
            add, remove = wanted - self._active_rooms, self._active_rooms - wanted
            if not add and not remove:
                return
            try:
                if add:
                    await pubsub.subscribe(*add)
                if remove:
                    await pubsub.unsubscribe(*remove)
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                # The listener sees the broken link too, reconnects and resubscribes all.
                if self._sync_log.should_log():
                    log.warning(
                        "fan-out: room subscription failed; the listener resubscribes",
                        extra={"event": "fanout.room_sync_failed", "reason": repr(error)[:200]},
                    )
                return
            self._active_rooms = (self._active_rooms | add) - remove

    async def _listen(self) -> AsyncIterator[Any]:
        """The library's listener filter, taking room channels besides the shared one."""
        shared = str(self.channel).encode()
        rooms = self.room_prefix.encode()
        heartbeat = self.heartbeat_channel.encode()
        query, reply = self.query_channel.encode(), self.reply_channel.encode()
        async for message in self._redis_listen_with_retries():
            if message["type"] == "pong":
                self.heard_pong(message.get("data"))
                continue
            # "smessage": sharded pub/sub, on a Redis Cluster
            if message["type"] not in ("message", "smessage") or "data" not in message:
                continue
            channel = message["channel"]
            if channel == shared or channel.startswith(rooms):
                yield message["data"]
            elif channel == query:
                self._answer_query(message["data"])
            elif channel == reply:
                self._take_reply(message["data"])
            elif channel == heartbeat:
                self._unheard_heartbeats = 0
                if self.deaf_since is not None:
                    log.info(
                        "fan-out listener hears Redis again",
                        extra={
                            "event": "fanout.listener_hears",
                            "deaf_s": round(time.monotonic() - self.deaf_since, 1),
                        },
                    )
                    self.deaf_since = None

    def heard_pong(self, data: object) -> None:
        """A PING sent on the subscriber connection came back (`server.sio.cluster.recovery`
        uses it to know a SUBSCRIBE took effect); nothing to do here."""

    # --- the listener's self-check ----------------------------------------------------

    def _start_watchdog(self) -> None:
        if self._watchdog is None or self._watchdog.done():
            self._watchdog = asyncio.get_running_loop().create_task(self._watch_listener())

    async def _watch_listener(self) -> None:
        while True:
            await asyncio.sleep(HEARTBEAT_SECONDS)
            if not self.subscribed:
                continue  # the listener is already reconnecting
            try:
                receivers = await asyncio.wait_for(
                    self.endpoint.publish(self._publisher(), self.heartbeat_channel, b"1"),
                    PUBLISH_TIMEOUT_SECONDS,
                )
            except (OSError, TimeoutError, aioredis.RedisError):
                continue  # Redis unreachable: the listener finds out by itself
            self._unheard_heartbeats += 1
            if receivers == 0:
                await self._resubscribe("redis dropped the subscription")
            elif self._unheard_heartbeats > DEAF_AFTER_HEARTBEATS:
                if self.deaf_since is None:
                    self.deaf_since = time.monotonic()
                await self._resubscribe(f"{DEAF_AFTER_HEARTBEATS} heartbeats not heard")

    async def _resubscribe(self, reason: str) -> None:
        """Drop the subscriber link; the listener's read ends and it subscribes anew."""
        log.error(
            "fan-out listener hears nothing from Redis; resubscribing",
            extra={"event": "fanout.listener_deaf", "reason": reason},
        )
        self._set_subscribed(False)
        self._unheard_heartbeats = 0
        await self._reset_pubsub()

    async def _redis_listen_with_retries(self) -> AsyncIterator[Any]:
        backoff = LISTEN_BACKOFF_START
        while True:
            try:
                pubsub = self._subscriber()
                if not self.subscribed:
                    rooms = set(self.room_channels)
                    await pubsub.subscribe(
                        self.channel,
                        self.heartbeat_channel,
                        self.query_channel,
                        self.reply_channel,
                        *rooms,
                    )
                    self._active_rooms = rooms
                    self._unheard_heartbeats = 0
                    self._set_subscribed(True)
                    self._start_watchdog()
                    self._sync_rooms_soon()  # rooms changed while subscribing
                    backoff = LISTEN_BACKOFF_START
                async for message in pubsub.listen():
                    yield message
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure here means: reconnect
                self._set_subscribed(False)
                if self._listen_log.should_log():
                    log.error(
                        "fan-out subscriber lost Redis; retrying",
                        extra={
                            "event": "fanout.listen_failed",
                            "reason": f"{type(error).__name__}: {error}",
                            "retry_in_s": backoff,
                        },
                    )
                await self._reset_pubsub()
                await asyncio.sleep(backoff)
                backoff = min(backoff * 2, LISTEN_BACKOFF_CAP)

    def _set_subscribed(self, value: bool) -> None:
        if value and not self.subscribed:
            log.info("fan-out subscribed", extra={"event": "fanout.subscribed"})
            self._listen_log.reset()
            self.down_since = None
        elif not value and self.subscribed:
            self.metrics.fanout_outages.inc()
            self.down_since = time.monotonic()
        self.tried = True
        self.subscribed = value
        if value:
            self._subscribed_event.set()
        else:
            self._subscribed_event.clear()
        self.metrics.fanout_up.set(1 if value else 0)

    async def _reset_pubsub(self) -> None:
        pubsub, self.pubsub = self.pubsub, None
        self._active_rooms = set()
        if pubsub is not None:
            # Closing a link to a Redis that is gone may fail or hang: bounded, and
            # the failure is logged (at most once per burst, as the outage itself).
            await self._close_quietly("subscriber link", pubsub.aclose(), 1.0)

    async def _close_quietly(self, what: str, closing: Awaitable[object], timeout: float) -> None:
        """Await `closing` at most `timeout` s; a failure is logged, cancellation propagates."""
        try:
            await asyncio.wait_for(closing, timeout)
        except (TimeoutError, OSError, aioredis.RedisError) as error:
            if self._close_log.should_log():
                log.warning(
                    "fan-out: closing a Redis connection failed",
                    extra={
                        "event": "fanout.close_failed",
                        "what": what,
                        "reason": f"{type(error).__name__}: {error}",
                        "suppressed": self._close_log.take_suppressed(),
                    },
                )

    async def close(self, timeout: float = 2.0) -> None:
        """Stop listening and drop connections without waiting on a dead Redis."""
        if self._watchdog is not None:
            self._watchdog.cancel()
        if self._drainer is not None:
            self._drainer.cancel()
        if self._sender is not None:
            self._sender.cancel()
        self._dropped("shutdown", self.outbox.clear() + len(self._queued))
        for queued in self._queued:
            queued.sent.cancel()
        self._queued.clear()
        thread = getattr(self, "thread", None)
        if isinstance(thread, asyncio.Task) and not await cancel_and_wait(thread, timeout):
            log.warning(
                "fan-out listener did not stop in time; shutting down without it",
                extra={"event": "fanout.close_slow", "timeout_s": timeout},
            )
        self._close_log.reset()  # the shutdown's own failures are worth a line each
        if self.redis is not None:
            await self._close_quietly("publisher", self.redis.aclose(), timeout)
        if self.pubsub is not None:
            await self._close_quietly("subscriber", self.pubsub.aclose(), timeout)
        self.subscribed = False
