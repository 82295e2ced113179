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
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from redis import asyncio as aioredis

from relay.link import BACKOFF_CAP, BACKOFF_START, LINK_TIMEOUT_SECONDS, PeerLink
from relay.metrics import RelayMetrics
from relay.settings import Settings
from relay.wire import OFFSET, Forward, decode, forward_of
from server.core.jsonlog import OncePerBurst
from server.sio.cluster.recovery import KeyLayout

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


@dataclass(frozen=True)
class Mark:
    """Where the live subscription took over: the newest near stream id after SUBSCRIBE
    (None: the stream is empty), and the near Redis's clock then, in ms."""

    upto: str | None
    now_ms: int


async def read_mark(near: aioredis.Redis, stream_key: str) -> Mark:
    pipe = near.pipeline(transaction=False)
    pipe.xrevrange(stream_key, count=1)
    pipe.time()
    newest, (seconds, micros) = await asyncio.wait_for(pipe.execute(), LINK_TIMEOUT_SECONDS)
    upto = newest[0][0].decode() if newest else None
    return Mark(upto, int(seconds) * 1000 + int(micros) // 1000)


class CatchUps:
    """The catch-ups of one relay's links, each time it begins hearing its region."""

    def __init__(
        self,
        region: str,
        links: list[PeerLink],
        route: Route,
        settings: Settings,
        metrics: RelayMetrics,
    ) -> None:
        self.region = region
        self.links = links if settings.recovery else []  # no stream, nothing to catch up
        self.route = route  # the relay's own routing (`Relay.route`), not a copy
        self.settings = settings
        self.metrics = metrics
        self.layout = KeyLayout(settings.redis_channel)
        self._tasks: list[asyncio.Task[None]] = []
        self._log = OncePerBurst(window=10.0)

    def hold(self) -> None:
        """Before SUBSCRIBE: nothing heard live leaves ahead of the catch-up."""
        for link in self.links:
            link.hold()

    def start(self, near: aioredis.Redis) -> None:
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

    async def _run(self, near: aioredis.Redis, began: float) -> None:
        stream_key = self.links[0].stream_key
        mark = await _retrying(lambda: read_mark(near, stream_key), "the stream's end", self._log)
        await asyncio.gather(*(self._link(link, near, mark, began) for link in self.links))

    async def _link(self, link: PeerLink, near: aioredis.Redis, mark: Mark, began: float) -> None:
        await link.wait_up()
        took = await _retrying(link.crossed, f"what crossed to {link.name}", self._log)
        if took is not None:
            start = f"({took}"  # exclusive: it crossed
        else:
            horizon_ms = int(handover_horizon_seconds(self.settings.lease_seconds) * 1000)
            start = f"{mark.now_ms - horizon_ms}-0"
        caught: list[Forward] = []
        unkept = 0
        if mark.upto is not None:
            upto = mark.upto
            caught, unkept = await _retrying(
                lambda: self._read(link, near, start, upto), "the stream", self._log
            )
        link.resume(caught, mark.upto, unkept)
        seconds = time.monotonic() - began
        self.metrics.catchups.labels(link=link.name).inc()
        self.metrics.catchup_messages.labels(link=link.name).inc(len(caught))
        self.metrics.catchup_seconds.labels(link=link.name).set(seconds)
        link.last_catchup = {
            "at": datetime.now(UTC).isoformat(timespec="milliseconds"),
            "messages": len(caught),
            "seconds": round(seconds, 3),
            "after": took,
            "upto": mark.upto,
        }
        log.info(
            "relay caught up from the recovery stream",
            extra={"event": "relay.caught_up", "link": link.name, **link.last_catchup},
        )

    async def _read(
        self, link: PeerLink, near: aioredis.Redis, start: str, upto: str
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
                    near.xrange(link.stream_key, min=start, max=upto, count=PAGE),
                    LINK_TIMEOUT_SECONDS,
                )
            )
            for entry_id, data in entries:
                forward = self._forward_of(link, entry_id, data, now)
                if forward is not None:
                    seen += 1
                    kept.append(forward)
            if len(entries) < PAGE:
                break
            start = "(" + entries[-1][0]
        return list(kept), seen - len(kept)

    def _forward_of(self, link: PeerLink, entry_id: str, data: bytes, now: float) -> Forward | None:
        message = decode(data)
        if message is None:
            self.metrics.bad_message(f"a stream entry {entry_id} that is not a JSON object")
            return None
        channel = self.layout.channel_of(message)
        if link not in self.route(channel.encode(), message, channel != self.layout.channel):
            return None  # the far region has no member in the room, or not the addressee
        message[OFFSET] = entry_id  # as the emit script publishes it
        return forward_of(message, channel, self.region, now)  # None: it came from afar


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
