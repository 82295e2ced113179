"""The relay of one region: hears its region's Redis, forwards to each far region
what that region has members for, and announces its own region's interest.

- Hearing: one subscriber on this region's Redis, `PSUBSCRIBE <channel>#room#*`
  (a pattern, so the relay's own subscription never counts as a room member) and
  `SUBSCRIBE <channel>` (namespace and sid emits, acks, remote joins) and
  `<channel>#query` (fleet queries). Redis hands one
  subscriber its messages in publish order; each link keeps that order.
- Per message O(links): a room message is decoded only if some far region wants
  the room (a set lookup per link); a shared-channel message addressed to one node
  (a sid emit, an ack, a remote join: `relay.wire.addressee`) goes only to the far
  region that announced the node, one that is not (a namespace emit) to every far
  region; a message that came from a far region (it carries `iofleet_origin`) is
  never forwarded again.
- Interest: every `IOFLEET_RELAY_INTEREST_SECONDS` the relay reads `PUBSUB
  CHANNELS <channel>#room#*` on its own Redis (the room channels its servers
  subscribe: `server.sio.cluster.fanout` subscribes a room's channel only while
  the node has a member) and `<channel>#heartbeat#*` (its nodes), keeps the set
  in `<channel>#relay#interest` and publishes each change on
  `<channel>#relay#interest#changes`, where the far relays' links listen
  (`relay.link`). A room (or a node) stays in the set for
  `IOFLEET_RELAY_INTEREST_LINGER_SECONDS` after its last member here left (by
  default the recovery window): a member that dropped and comes back recovers
  what the far region sent meanwhile.
- Catch-up: each time the relay begins hearing its region (it became active, its
  subscription came back), what was published meanwhile comes from the recovery
  stream (on a Cluster: each namespace's) ahead of live traffic (`relay.catchup`),
  and the far Redis takes each message once (`relay.guard`).
- Fleet queries: a server's query is asked of each far region (`PeerLink.query`)
  and answered once, with all their sockets: the asking server counts the relay
  as one more listener, so it waits for one reply from it. A query a far relay
  republished here is answered with no sockets (that relay counts this one too).
- On a Redis Cluster (`redis+cluster://`, `relay.sharded`): the relay hears by
  `SSUBSCRIBE` exactly the room channels some far region wants (kept current as
  the links learn the far interest), reads interest with `PUBSUB SHARDCHANNELS`
  on every master less its own subscriptions, and publishes with SPUBLISH; the
  lease is a key there as on one Redis.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from typing import Any

import orjson
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from relay.catchup import CatchUps
from relay.layout import RegionLayout
from relay.link import (
    BACKOFF_CAP,
    BACKOFF_START,
    LINK_TIMEOUT_SECONDS,
    PeerLink,
    close_quietly,
    single,
)
from relay.metrics import RelayMetrics
from relay.settings import Settings
from relay.sharded import shard_interest
from relay.wire import INTEREST_ALL, ORIGIN, Channels, Members, addressee, decode, forward_of
from server.core.jsonlog import OncePerBurst
from server.core.tasks import cancel_all
from server.net.redis_topology import (
    RedisClient,
    ShardedSubscriber,
    Subscriber,
    parse_redis_url,
)

log = logging.getLogger("iofleet.relay")

# A Cluster's PING after SSUBSCRIBE, for the catch-up's start (`Relay._ping_streams`).
CATCHUP_PING = b"iofleet-relay-catchup"

# Renew the lease only if this replica still holds it.
RENEW_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return 0
"""

# The status key outlives its last write by this many leases: a standby that takes
# over writes it again before; a region with no active relay shows "unknown" after.
STATUS_TTL_LEASES = 3

# How long a stand-by waits for its hearing tasks to end (each cancel repeated).
CANCEL_TIMEOUT_SECONDS = 10.0

RELEASE_SCRIPT = """
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
"""


async def _cancel(tasks: list[asyncio.Task[None]]) -> None:
    """End the tasks for certain (`cancel_all` repeats a cancel that was lost): a relay
    standing by must stop hearing and forwarding, or two replicas forward at once."""
    left = await cancel_all(tasks, CANCEL_TIMEOUT_SECONDS)
    if left:
        log.error(
            "relay: tasks still running after being cancelled",
            extra={"event": "relay.cancel_stuck", "tasks": left},
        )


class Relay:
    def __init__(self, settings: Settings, metrics: RelayMetrics) -> None:
        self.settings = settings
        self.metrics = metrics
        self.region = settings.region
        self.channels = Channels(settings.redis_channel)
        self.endpoint = parse_redis_url(settings.redis_url)
        self.layout = RegionLayout.of(settings.redis_channel, self.endpoint, settings.recovery)
        self.links = [
            PeerLink(self.region, peer, self.channels, settings, metrics)
            for peer in settings.peer_list()
        ]
        self.catchups = CatchUps(
            self.region, self.links, self.route, settings, metrics, self.layout, self.namespaces
        )
        self.instance = secrets.token_hex(8)  # this replica, in the lease
        self.leader = False
        self.redis_answered: float | None = None  # monotonic time its Redis last answered
        self.local_up = False
        self.local_rooms: set[bytes] | None = None  # None: not read yet (or read again)
        self.local = Members(self.channels)  # local_rooms, read: this region's rooms and nodes
        self.started = time.monotonic()
        self._client: RedisClient | None = None
        # On a Cluster: the channels the relay's sharded subscriber holds (never local
        # interest), the namespaces its servers have sockets in, and a wake-up for the
        # subscriber when what it should hold changed.
        self._own: set[bytes] = set()
        self._namespaces: set[str] = {"/"}
        self._wanted_changed = asyncio.Event()
        self._catchup_pongs = 0  # PINGs after SSUBSCRIBE not answered yet (`_ping_streams`)
        for link in self.links:
            link.on_interest = self._wanted_changed.set
        self._queries: set[asyncio.Task[None]] = set()
        self._gone: dict[bytes, float] = {}  # room channel -> when its last member left
        self._log = OncePerBurst(window=10.0)
        metrics.local_up.set(0)

    def status(self) -> dict[str, Any]:
        return {
            "region": self.region,
            "redis": str(self.endpoint),
            "leader": self.leader,
            "local": "up" if self.local_up else "down",
            "local_rooms": len(self.local.rooms),
            "local_nodes": len(self.local.nodes),
            "uptime_s": round(time.monotonic() - self.started, 1),
            "links": [link.status() for link in self.links],
        }

    async def run(self) -> None:
        await asyncio.gather(self._hold_lease(), *(link.run() for link in self.links))

    # --- one active relay per region: a lease in its Redis -----------------------------

    async def _hold_lease(self) -> None:
        """Take the region's lease when it is free and keep it; while this relay holds
        it, it hears its region and announces its interest. Two replicas run, one
        forwards: a standby takes over within `IOFLEET_RELAY_LEASE_SECONDS` of the
        active one's death (SIGKILL, a lost node). Its links run either way, so what
        an outbox holds is delivered after a hand-over too."""
        key, lease_ms = self.channels.lease_key, int(self.settings.lease_seconds * 1000)
        held_until = 0.0
        active: list[asyncio.Task[None]] = []
        loop = asyncio.get_running_loop()
        try:
            while True:
                now = time.monotonic()
                try:
                    client = self._local()
                    if active:
                        kept = await asyncio.wait_for(
                            client.eval(RENEW_SCRIPT, 1, key, self.instance, lease_ms),
                            LINK_TIMEOUT_SECONDS,
                        )
                    else:
                        kept = await asyncio.wait_for(
                            client.set(key, self.instance, nx=True, px=lease_ms),
                            LINK_TIMEOUT_SECONDS,
                        )
                    self.redis_answered = now
                    if kept:
                        held_until = now + self.settings.lease_seconds
                    elif active:
                        held_until = 0.0  # another relay holds it now
                except (OSError, TimeoutError, aioredis.RedisError) as error:
                    self._warn("relay: the region's lease could not be renewed", error)
                leader = time.monotonic() < held_until
                if leader and not active:
                    log.info("relay active for its region", extra={"event": "relay.active"})
                    active = [
                        loop.create_task(self._listen_local(), name="listen_local"),
                        loop.create_task(self._announce_interest(), name="announce_interest"),
                        loop.create_task(self._write_status(), name="write_status"),
                    ]
                elif not leader and active:
                    log.warning("relay standing by", extra={"event": "relay.standby"})
                    await _cancel(active)
                    active = []
                    self.catchups.stand_by()
                    self._set_local(False)
                    self.local_rooms = None  # another replica announced meanwhile: re-read all
                self.leader = leader
                await asyncio.sleep(self.settings.lease_seconds / 3)
        finally:
            await _cancel(active)
            self.catchups.cancel()

    async def _write_status(self) -> None:
        """While active: the links' status, for the region's servers (`/admin/status`,
        `server.node.region_links`), every third of a lease, expiring after
        `STATUS_TTL_LEASES` leases without a write."""
        ttl_ms = int(self.settings.lease_seconds * STATUS_TTL_LEASES * 1000)
        while True:
            written = orjson.dumps({**self.status(), "written_at": time.time()})
            try:
                await asyncio.wait_for(
                    self._local().set(self.channels.status_key, written, px=ttl_ms),
                    LINK_TIMEOUT_SECONDS,
                )
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                self._warn("relay: the links' status for the servers was not written", error)
            await asyncio.sleep(self.settings.lease_seconds / 3)

    def ready(self) -> bool:
        """Its own Redis answered within a lease: active or standby, it can forward."""
        answered = self.redis_answered
        return answered is not None and time.monotonic() - answered < self.settings.lease_seconds

    async def close(self) -> None:
        """Shutdown: hand the lease over at once (a rolling update does not wait for it
        to expire); what the outboxes still hold is lost, counted."""
        if self.leader:
            local = self._local()
            try:
                await asyncio.wait_for(
                    local.eval(RELEASE_SCRIPT, 1, self.channels.lease_key, self.instance),
                    LINK_TIMEOUT_SECONDS,
                )
                # The servers show "unknown" at once, not the links as they were.
                await asyncio.wait_for(local.delete(self.channels.status_key), LINK_TIMEOUT_SECONDS)
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                self._warn("relay: the lease was not released; a standby waits it out", error)
        for link in self.links:
            link.drop_all()

    def _local(self) -> RedisClient:
        if self._client is None:
            self._client = self.endpoint.client(
                f"iofleet-relay-{self.region}",
                socket_connect_timeout=LINK_TIMEOUT_SECONDS,
                socket_timeout=LINK_TIMEOUT_SECONDS,
            )
        return self._client

    # --- this region's traffic -------------------------------------------------------

    async def _listen_local(self) -> None:
        """Hear this region's Redis, reconnecting with capped backoff after any failure."""
        hear = self._hear_sharded if self.layout.cluster else self._hear
        backoff = BACKOFF_START
        while True:
            try:
                await hear()
            except asyncio.CancelledError:
                raise
            except Exception as error:  # any failure here means: reconnect
                if self.local_up:  # it was heard: retry soon
                    backoff = BACKOFF_START
                self._set_local(False)
                self._warn("relay: this region's Redis is unreachable; retrying", error)
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _hear(self) -> None:
        """One Redis: PSUBSCRIBE the room channels, SUBSCRIBE the shared and query ones."""
        shared, query = self.channels.base.encode(), self.channels.query.encode()
        listener = self.endpoint.client(
            f"iofleet-relay-{self.region}-listener",
            socket_connect_timeout=LINK_TIMEOUT_SECONDS,
            socket_keepalive=True,
            health_check_interval=10,
        )
        pubsub = listener.pubsub()
        try:
            self.catchups.hold()  # what is heard now waits behind the catch-up
            await pubsub.subscribe(self.channels.base, self.channels.query)
            await pubsub.psubscribe(self.channels.room_pattern)  # last: see below
            self._set_local(True)
            async for message in pubsub.listen():
                kind = message.get("type")
                if kind == "pmessage":
                    self._forward(message["channel"], message["data"], room=True)
                elif kind == "message" and message["channel"] == shared:
                    self._forward(shared, message["data"], room=False)
                elif kind == "message" and message["channel"] == query:
                    self._on_query(message["data"])
                elif kind == "psubscribe":  # every subscription took effect (in order)
                    self.catchups.start(single(self._local()))  # what went unheard until now
        finally:
            await close_quietly(pubsub.aclose())

    async def _hear_sharded(self) -> None:
        """A Cluster: SSUBSCRIBE to the shared and query channels and to what the far
        regions want (`_wanted`), kept current by `_follow_wanted`; a failure of
        either ends both (the caller reconnects)."""
        subscriber = self.endpoint.subscriber(
            f"iofleet-relay-{self.region}-listener",
            socket_connect_timeout=LINK_TIMEOUT_SECONDS,
            socket_keepalive=True,
        )
        tasks: list[asyncio.Task[None]] = []
        try:
            await self._namespaces_announced()
            wanted = self._wanted()
            self.catchups.hold()  # what is heard now waits behind the catch-up
            await subscriber.subscribe(
                self.channels.base, self.channels.query, *(c.decode() for c in wanted)
            )
            self._own = wanted
            self._set_local(True)
            self._catchup_pongs = await self._ping_streams(subscriber, wanted)
            loop = asyncio.get_running_loop()
            tasks = [
                loop.create_task(self._take_sharded(subscriber), name="take_sharded"),
                loop.create_task(self._follow_wanted(subscriber), name="follow_wanted"),
            ]
            done, _ = await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
            for task in done:
                task.result()  # raises what ended it
        finally:
            self._own = set()
            await _cancel(tasks)
            await close_quietly(subscriber.aclose())

    async def _namespaces_announced(self) -> None:
        """A Cluster: the namespaces in the region's announced interest (the set the
        active relay, maybe a dead one, last wrote), before this relay read its own:
        it hears their channels, and its catch-up reads their streams, from the start."""
        client = self._local()
        members = await asyncio.wait_for(
            client.smembers(self.channels.interest_key),  # type: ignore[arg-type,unused-ignore]
            LINK_TIMEOUT_SECONDS,
        )
        for member in members:  # type: ignore[union-attr,unused-ignore]
            name = member.decode(errors="replace") if isinstance(member, bytes) else str(member)
            parsed = self.layout.keys.room_of(name)  # a room's or a namespace's channel
            if parsed is not None:
                self._namespaces.add(parsed[0])

    async def _ping_streams(self, subscriber: Subscriber, held: set[bytes]) -> int:
        """A Cluster: PING after the SSUBSCRIBEs on the master of each namespace stream a
        catch-up reads (a held channel in its slot); its answer means they took effect
        there, so the stream's mark splits it between heard live and not. The number
        of answers to wait for (0: no catch-up)."""
        if not self.catchups.enabled:
            return 0
        by_namespace: dict[str, bytes] = {}
        for channel in sorted(held):
            parsed = self.layout.keys.room_of(channel.decode(errors="replace"))
            if parsed is not None:
                by_namespace.setdefault(parsed[0], channel)
        assert isinstance(subscriber, ShardedSubscriber)  # a Cluster's (`_hear_sharded`)
        for channel in by_namespace.values():
            await subscriber.ping(CATCHUP_PING, channel.decode())
        if not by_namespace:
            self.catchups.start(self._local())
        return len(by_namespace)

    async def _take_sharded(self, subscriber: Subscriber) -> None:
        shared, query = self.channels.base.encode(), self.channels.query.encode()
        async for message in subscriber.listen():
            kind = message.get("type")
            if kind == "pong" and message.get("data") == CATCHUP_PING:
                self._catchup_pongs -= 1
                if self._catchup_pongs == 0:  # every subscription took effect
                    self.catchups.start(self._local())  # what went unheard until now
                continue
            if kind != "smessage":
                continue
            channel = message["channel"]
            if channel == query:
                self._on_query(message["data"])
            elif channel == shared or self.layout.namespace_of(channel) is not None:
                # A namespace channel carries namespace and sid emits: every far
                # region gets them, as the shared channel's on one Redis.
                self._forward(channel, message["data"], room=False)
            else:
                self._forward(channel, message["data"], room=True)

    def namespaces(self) -> set[str]:
        """The namespaces whose streams a catch-up reads: those the relay hears (its
        servers' and, on a Cluster, every namespace of a room a far region wants)."""
        found = {"/"} | self._namespaces
        for link in self.links:
            for channel in link.interest.rooms:
                parsed = self.layout.keys.room_of(channel.decode(errors="replace"))
                if parsed is not None:
                    found.add(parsed[0])
        return found

    def _wanted(self) -> set[bytes]:
        """The channels of this region the relay must hear on a Cluster: each room some
        far region has members in, and each namespace channel in use (its servers'
        namespaces, and the far regions': a namespace emit reaches every region)."""
        wanted: set[bytes] = set()
        for link in self.links:
            wanted |= link.interest.rooms
        for namespace in self._namespaces:
            channel = self.layout.namespace_channel(namespace)
            if channel is not None:
                wanted.add(channel.encode())
        return wanted

    async def _follow_wanted(self, subscriber: Subscriber) -> None:
        """(Un)subscribe as `_wanted` changes. A channel counts as the relay's own from
        its SSUBSCRIBE's answer until just before its SUNSUBSCRIBE: in between, the
        interest read may count the relay as a member (a moment of interest too many,
        never one too few)."""
        while True:
            await self._wanted_changed.wait()
            self._wanted_changed.clear()
            wanted = self._wanted()
            add, remove = wanted - self._own, self._own - wanted
            if remove:
                self._own -= remove
                await subscriber.unsubscribe(*(c.decode() for c in remove))
            if add:
                await subscriber.subscribe(*(c.decode() for c in add))
                self._own |= add

    def _set_local(self, up: bool) -> None:
        if up != self.local_up:
            log.info(
                "relay hears its region's Redis" if up else "relay lost its region's Redis",
                extra={"event": "relay.local_up" if up else "relay.local_down"},
            )
        self.local_up = up
        self.metrics.local_up.set(1 if up else 0)

    def _forward(self, channel: bytes, data: bytes, room: bool) -> None:
        if room and not any(link.interested(channel) for link in self.links):
            return  # no far member: not even decoded
        message = decode(data)
        if message is None:
            self.metrics.bad_message(f"not a JSON object on {channel[:120]!r}")
            return
        if not (links := self.route(channel, message, room)):
            return
        name = channel.decode()
        stream = self.layout.stream_of(name)  # used only if it came through the stream
        forward = forward_of(message, name, self.region, time.monotonic(), stream)
        if forward is None:
            return  # it came from a far region: it crossed its one link already
        for link in links:
            link.send(link.for_far(forward, message))

    def route(self, channel: bytes, message: dict[str, Any], room: bool) -> list[PeerLink]:
        """The links a message heard on `channel` goes to: live, and in a catch-up."""
        if room:
            return [link for link in self.links if link.interested(channel)]
        return self._addressed(message)

    def _addressed(self, message: dict[str, Any]) -> list[PeerLink]:
        """The links a shared-channel message goes to: the far regions that announced
        its addressee's node; none if this region runs it; every far region if it is
        for no one node, or for a node no region announced: a node that just started
        may be heard of (a sid in a message) before its region's announcement arrives,
        and a lost emit costs more than a few bytes (counted: `unaddressed`)."""
        target = addressee(message)
        if target is None:
            return self.links
        there = [link for link in self.links if link.serves(target)]
        if there or self.local.has(target):
            return there
        self.metrics.unaddressed.inc()
        return self.links

    def _on_query(self, data: bytes) -> None:
        request = decode(data)
        if request is None or not isinstance(request.get("reply_to"), str) or "id" not in request:
            self.metrics.bad_message("a fleet query without id or reply_to")
            return
        task = asyncio.get_running_loop().create_task(self._answer(request))
        self._queries.add(task)
        task.add_done_callback(self._queries.discard)

    async def _answer(self, request: dict[str, Any]) -> None:
        """One reply for the asking server: the far regions' sockets (none for a query
        a far relay republished here)."""
        sockets: list[list[Any]] = []
        if ORIGIN not in request:
            for found in await asyncio.gather(*(link.query(request) for link in self.links)):
                sockets += found
        reply = orjson.dumps({"id": request["id"], "sockets": sockets})
        try:
            await asyncio.wait_for(
                self.endpoint.publish(self._local(), request["reply_to"], reply),
                LINK_TIMEOUT_SECONDS,
            )
        except (OSError, TimeoutError, aioredis.RedisError) as error:
            self._warn("relay: a fleet query reply was not sent", error)

    # --- this region's interest -----------------------------------------------------

    async def _announce_interest(self) -> None:
        while True:
            try:
                await self._read_and_announce()
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                self.local_rooms = None  # announce the whole set again once Redis answers
                self._warn("relay: this region's interest could not be read", error)
            await asyncio.sleep(self.settings.interest_seconds)

    async def _read_and_announce(self) -> None:
        client = self._local()
        if isinstance(client, RedisCluster):
            subscribed = await self._shard_rooms(client)
        else:
            channels: list[Any] = []
            for pattern in (self.channels.room_pattern, self.channels.heartbeat_pattern):
                channels += await asyncio.wait_for(
                    client.pubsub_channels(pattern), LINK_TIMEOUT_SECONDS
                )
            subscribed = {bytes(channel) for channel in channels}
        current = self._lingering(subscribed)
        channel = self.channels.interest_changes
        if isinstance(client, RedisCluster):
            # The set and its change channel are in two slots (no transaction): the set
            # first, then the changes; a far link reading the set in between gets a
            # change it already has (idempotent).
            pipe = client.pipeline(transaction=False)
            changes = self._write_interest(pipe, current)
            if changes is None:
                return
            await asyncio.wait_for(pipe.execute(), LINK_TIMEOUT_SECONDS)
            published = self.endpoint.publish_many(client, [(channel, c) for c in changes])
            await asyncio.wait_for(published, LINK_TIMEOUT_SECONDS)
        else:
            step = client.pipeline(transaction=True)  # the set and its changes in one step
            changes = self._write_interest(step, current)
            if changes is None:
                return
            for change in changes:
                step.publish(channel, change)
            await asyncio.wait_for(step.execute(), LINK_TIMEOUT_SECONDS)
        self.local_rooms = current
        self.local.replace(current)
        self.metrics.local_rooms.set(len(self.local.rooms))

    def _write_interest(self, pipe: Any, current: set[bytes]) -> list[bytes] | None:
        """Queue on `pipe` the interest set's update to `current`; the changes to
        publish after it (None: nothing changed)."""
        key, known = self.channels.interest_key, self.local_rooms
        if known is None:
            pipe.delete(key)
            if current:
                pipe.sadd(key, *current)
            return [INTEREST_ALL]
        added, removed = current - known, known - current
        if not added and not removed:
            return None
        if added:
            pipe.sadd(key, *added)
        if removed:
            pipe.srem(key, *removed)
        return [b"+" + c for c in added] + [b"-" + c for c in removed]

    async def _shard_rooms(self, client: RedisCluster) -> set[bytes]:
        """This region's interest on a Cluster (`shard_interest`): its rooms, less the
        relay's own subscriptions, and its nodes (their heartbeat channels); and the
        namespaces in use here, so the relay hears their channels."""
        subscribed: set[bytes] = set()
        for pattern in (self.channels.room_pattern, self.channels.heartbeat_pattern):
            subscribed |= await shard_interest(client, pattern, self._own, LINK_TIMEOUT_SECONDS)
        found = (self.layout.namespace_of(channel) for channel in subscribed)
        namespaces = {namespace for namespace in found if namespace is not None}
        if not namespaces <= self._namespaces:
            self._namespaces |= namespaces  # kept: a namespace's channel is cheap to hold
            self._wanted_changed.set()
        return subscribed

    def _lingering(self, subscribed: set[bytes]) -> set[bytes]:
        """The interest to announce: the rooms subscribed now, and those whose last
        member left less than the linger ago. A member that dropped may come back
        within the recovery window and must find in its region's stream what the
        far region sent meanwhile, so the far region must go on sending it."""
        now = time.monotonic()
        linger = self.settings.linger_seconds()
        for channel in (self.local_rooms or set()) - subscribed:
            self._gone.setdefault(channel, now)
        for channel in subscribed:
            self._gone.pop(channel, None)
        for channel, since in list(self._gone.items()):
            if now - since >= linger:
                del self._gone[channel]
        return subscribed | self._gone.keys()

    def _warn(self, what: str, error: BaseException) -> None:
        if self._log.should_log():
            log.warning(
                what,
                extra={
                    "event": "relay.local_failed",
                    "reason": f"{type(error).__name__}: {error}"[:200],
                    "suppressed": self._log.take_suppressed(),
                },
            )
