"""Catch-up: what the region published while no relay heard it crosses once, in order.

Between an active relay's death and a standby taking the lease (up to
`IOFLEET_RELAY_LEASE_SECONDS` and a lease poll), or while the relay's own subscription
is reconnecting, nobody forwards the region's pub/sub. With recovery on, every
recoverable emit is also in the region's stream (`server.sio.cluster.recovery`), so
whenever the relay begins hearing its region (`CatchUps`, called by `relay.relay`):

1. Each link holds: nothing more leaves (what is heard live waits in the outbox).
2. The relay subscribes, then reads the newest near stream id: the `mark`. Every
   entry after it is heard live; every entry up to it is in the stream.
3. Once the link is up, the far Redis says the newest near id it took from this region
   (`relay.guard`: recorded in the script that writes each message there); the relay
   reads the near stream after it up to the mark (`XRANGE`, pages), keeps what the far
   region has members for (the room channel from recovery's `KeyLayout.channel_of`),
   and puts it ahead of what waits; waiting (and late live) streamed messages at or
   below the mark are dropped, being in the catch-up. Then the link sends again.

The far guard refuses what crossed already and anything behind a newer message, so
two replicas briefly both active, or a catch-up racing a dying relay's last batch,
cost no duplicate and no reorder. Without a record (nothing crossed within the
recovery window, or the far Redis restarted empty) the catch-up reaches back only
`handover_horizon_seconds`, the longest a hand-over leaves unheard: older entries
crossed or were of no interest. Without recovery there is no stream: the seconds of
a hand-over are lost, as a server's emits are while its Redis is away.

On a Redis Cluster (`relay.layout`) a region keeps one stream per namespace, in the
namespace's slot with its channels. A clustered region's catch-up reads a mark and an
`XRANGE` per namespace stream (the namespaces the relay hears: `Relay.namespaces`),
each on its own master; each stream's mark splits its own ids. Into a far Cluster
each far namespace stream has its record beside it (`relay.guard`); a single-Redis
region's one stream is caught up from the oldest of the records of the namespaces it
feeds. Each far record refuses what it took already, so that overlap costs no repeat.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis import asyncio as aioredis

from relay.layout import RegionLayout
from relay.link import BACKOFF_CAP, BACKOFF_START, LINK_TIMEOUT_SECONDS, PeerLink
from relay.metrics import RelayMetrics
from relay.settings import Settings
from relay.wire import OFFSET, Forward, decode, forward_of
from server.core.jsonlog import OncePerBurst
from server.net.redis_topology import RedisClient
from server.sio.cluster.recovery import stream_id

T = TypeVar("T")
# The links a message heard on a channel goes to (channel, message, a room channel?).
Route = Callable[[bytes, dict[str, Any], bool], list[PeerLink]]

log = logging.getLogger("iofleet.relay.catchup")

PAGE = 1000  # stream entries per XRANGE


def handover_horizon_seconds(lease_seconds: float) -> float:
    """How far back a hand-over can leave messages unheard: the dead relay renewed its
    lease at most a lease before it expired, the standby polls every third of a lease
    (`Relay._hold_lease`), and a second for the calls around it."""
    return lease_seconds * 4 / 3 + 1.0


# The newest id of KEYS[1] (false: empty) and the clock of the Redis holding it: one
# call routed by the stream's key, on one Redis or the stream's master in a Cluster.
MARK_SCRIPT = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
local now = redis.call('TIME')
local id = false
if newest[1] then id = newest[1][1] end
return {id, now[1], now[2]}
"""


@dataclass(frozen=True)
class Mark:
    """Where the live subscription took over: the newest near stream id after SUBSCRIBE
    (None: the stream is empty), and the near Redis's clock then, in ms."""

    upto: str | None
    now_ms: int


@dataclass(frozen=True)
class NearStream:
    """One near recovery stream and the namespaces whose entries it holds."""

    key: str
    namespaces: frozenset[str]


async def read_mark(near: RedisClient, stream_key: str) -> Mark:
    reply = await asyncio.wait_for(near.eval(MARK_SCRIPT, 1, stream_key), LINK_TIMEOUT_SECONDS)  # type: ignore[misc,unused-ignore]
    newest, seconds, micros = reply
    upto = bytes(newest).decode() if newest else None
    return Mark(upto, int(seconds) * 1000 + int(micros) // 1000)


def near_streams(layout: RegionLayout, namespaces: Iterable[str]) -> list[NearStream]:
    """The near streams a catch-up reads: one Redis keeps one for every namespace, a
    Cluster one per namespace (recovery's `KeyLayout.stream`)."""
    names = frozenset(namespaces) | {"/"}
    if not layout.keys.sharded:
        return [NearStream(layout.keys.stream("/"), names)]
    return [NearStream(layout.keys.stream(ns), frozenset({ns})) for ns in sorted(names)]


class CatchUps:
    """The catch-ups of one relay's links, each time it begins hearing its region."""

    def __init__(
        self,
        region: str,
        links: list[PeerLink],
        route: Route,
        settings: Settings,
        metrics: RelayMetrics,
        layout: RegionLayout,
        namespaces: Callable[[], set[str]],
    ) -> None:
        self.region = region
        self.links = links if settings.recovery else []  # no stream, nothing to catch up
        self.route = route  # the relay's own routing (`Relay.route`), not a copy
        self.settings = settings
        self.metrics = metrics
        self.layout = layout  # this region's names
        self.namespaces = namespaces  # those the relay hears (`Relay.namespaces`)
        self._tasks: list[asyncio.Task[None]] = []
        self._log = OncePerBurst(window=10.0)

    def hold(self) -> None:
        """Before SUBSCRIBE: nothing heard live leaves ahead of the catch-up."""
        for link in self.links:
            link.hold()

    @property
    def enabled(self) -> bool:
        return bool(self.links)

    def start(self, near: RedisClient) -> None:
        """After SUBSCRIBE: one catch-up per link (a previous one still running is
        replaced: this mark covers what it would have)."""
        self.cancel()
        if self.links:
            loop = asyncio.get_running_loop()
            self._tasks = [loop.create_task(self._run(near, time.monotonic()))]

    def cancel(self) -> None:
        for task in self._tasks:
            task.cancel()
        self._tasks = []

    def stand_by(self) -> None:
        """This relay no longer forwards: a catch-up not done is left to the next one."""
        self.cancel()
        for link in self.links:
            link.abandon()

    async def _run(self, near: RedisClient, began: float) -> None:
        streams = near_streams(self.layout, self.namespaces())
        marks: dict[str, Mark] = {}
        for stream in streams:
            read = functools.partial(read_mark, near, stream.key)
            marks[stream.key] = await _retrying(read, "a stream's end", self._log)
        await asyncio.gather(
            *(self._link(link, near, streams, marks, began) for link in self.links)
        )

    async def _start_of(
        self, link: PeerLink, stream: NearStream, mark: Mark
    ) -> tuple[str, str | None]:
        """Where `link`'s catch-up of `stream` begins (an XRANGE start), and after what
        id (None: no record, the horizon): the oldest of the far records it feeds."""
        taken: list[str | None] = []
        for record in sorted(link.records(stream.key, stream.namespaces)):
            read = functools.partial(link.crossed, record)
            taken.append(await _retrying(read, f"what crossed to {link.name}", self._log))
        known = [took for took in taken if took is not None]
        if known and len(known) == len(taken):
            took = min(known, key=lambda t: stream_id(t) or (0, 0))
            return f"({took}", took  # exclusive: it crossed
        horizon_ms = int(handover_horizon_seconds(self.settings.lease_seconds) * 1000)
        return f"{mark.now_ms - horizon_ms}-0", None

    async def _link(
        self,
        link: PeerLink,
        near: RedisClient,
        streams: list[NearStream],
        marks: dict[str, Mark],
        began: float,
    ) -> None:
        await link.wait_up()
        caught: list[Forward] = []
        unkept = 0
        after: dict[str, str | None] = {}
        for stream in streams:
            mark = marks[stream.key]
            start, after[stream.key] = await self._start_of(link, stream, mark)
            if mark.upto is None:
                continue
            read_range = functools.partial(self._read, link, near, stream.key, start, mark.upto)
            more, over = await _retrying(read_range, "the stream", self._log)
            caught += more
            unkept += over
        link.resume(caught, {key: mark.upto for key, mark in marks.items()}, unkept)
        seconds = time.monotonic() - began
        self.metrics.catchups.labels(link=link.name).inc()
        self.metrics.catchup_messages.labels(link=link.name).inc(len(caught))
        self.metrics.catchup_seconds.labels(link=link.name).set(seconds)
        one = len(streams) == 1  # one Redis: the stream's ids; a Cluster: per stream
        link.last_catchup = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "messages": len(caught),
            "seconds": round(seconds, 3),
            "streams": len(streams),
            "after": after[streams[0].key] if one else after,
            "upto": marks[streams[0].key].upto if one else {k: m.upto for k, m in marks.items()},
        }
        log.info(
            "relay caught up from the recovery stream",
            extra={"event": "relay.caught_up", "link": link.name, **link.last_catchup},
        )

    async def _read(
        self, link: PeerLink, near: RedisClient, stream: str, start: str, upto: str
    ) -> tuple[list[Forward], int]:
        """The near entries in [start, upto] the far region has members for, as forwards,
        at most an outbox (the newest kept); and how many of them did not fit."""
        limit = self.settings.outbox_messages or self.settings.recovery_max_messages
        kept: deque[Forward] = deque(maxlen=limit)
        seen = 0
        now = time.monotonic()
        pages = self.settings.recovery_max_messages // PAGE + 2  # the stream's bound, and one
        for _ in range(pages):
            entries = _entries(
                await asyncio.wait_for(
                    near.xrange(stream, min=start, max=upto, count=PAGE),
                    LINK_TIMEOUT_SECONDS,
                )
            )
            for entry_id, data in entries:
                forward = self._forward_of(link, stream, entry_id, data, now)
                if forward is not None:
                    seen += 1
                    kept.append(forward)
            if len(entries) < PAGE:
                break
            start = "(" + entries[-1][0]
        return list(kept), seen - len(kept)

    def _forward_of(
        self, link: PeerLink, stream: str, entry_id: str, data: bytes, now: float
    ) -> Forward | None:
        message = decode(data)
        if message is None:
            self.metrics.bad_message(f"a stream entry {entry_id} that is not a JSON object")
            return None
        channel = self.layout.channel_of(message, streamed=True)
        name = channel.encode()
        # A room's channel, or the shared one (one Redis) or a namespace's (a Cluster).
        room = channel != self.layout.keys.channel and self.layout.namespace_of(name) is None
        if link not in self.route(name, message, room):
            return None  # the far region has no member in the room, or not the addressee
        message[OFFSET] = entry_id  # as the emit script publishes it
        forward = forward_of(message, channel, self.region, now, stream)
        if forward is None:
            return None  # it came from afar
        return link.for_far(forward, message)


def _entries(reply: Any) -> list[tuple[str, bytes]]:
    """An XRANGE reply as (stream id, message) pairs: the emit script's field `m`."""
    return [(bytes(entry_id).decode(), bytes(fields.get(b"m", b""))) for entry_id, fields in reply]


async def _retrying(call: Callable[[], Awaitable[T]], what: str, burst: OncePerBurst) -> T:
    """`call()` until it answers, with capped backoff (the task is cancelled when the
    relay stands by); one warning per burst of failures."""
    backoff = BACKOFF_START
    while True:
        try:
            return await call()
        except (OSError, TimeoutError, aioredis.RedisError) as error:
            if burst.should_log():
                log.warning(
                    "relay: a catch-up could not read %s; retrying",
                    what,
                    extra={
                        "event": "relay.catchup_failed",
                        "reason": f"{type(error).__name__}: {error}"[:200],
                        "suppressed": burst.take_suppressed(),
                    },
                )
        await asyncio.sleep(backoff)
        backoff = min(backoff * 2, BACKOFF_CAP)
