"""The heartbeat of every Engine.IO connection on a node, as one timer wheel.

A connection's heartbeat is two steps that repeat: send a PING, then, `ping_timeout`
later, check that its PONG came (`server.eio.socket.EngineSocket.beat`). Giving each
connection a loop timer for each step (as python-engineio's task per connection, or
a `call_later` per ping and per deadline) costs a `TimerHandle`, a heap push and pop
and often a cancel per connection and step: at 100,000 idle connections that was
most of the node's idle CPU (bench/hundred_k.py). Here a step is due at a tick of
`tick` seconds; the connections due at one tick are a dict (insertion order, O(1)
removal when a connection closes), and the loop holds one timer per tick that has
any (cancelled when its last connection leaves). A step may run up to one tick
late, which the protocol allows (a client waits `pingInterval + pingTimeout` for
a PING).
"""

from __future__ import annotations

import asyncio
import math
from typing import Protocol

# A tick is this fraction of the shorter of the two heartbeat periods, within these
# bounds: 0.1 s at the defaults (25 s / 20 s), 5 ms for the protocol suite's 300 ms.
TICKS_PER_PERIOD = 100
MIN_TICK_SECONDS = 0.005
MAX_TICK_SECONDS = 0.1


class Beating(Protocol):
    def beat(self) -> None: ...


def tick_for(ping_interval: float, ping_timeout: float) -> float:
    period = min(ping_interval, ping_timeout) / TICKS_PER_PERIOD
    return min(MAX_TICK_SECONDS, max(MIN_TICK_SECONDS, period))


class HeartbeatWheel:
    __slots__ = ("_buckets", "_tick", "_timers")

    def __init__(self, tick: float) -> None:
        self._tick = tick
        self._buckets: dict[int, dict[Beating, None]] = {}
        self._timers: dict[int, asyncio.TimerHandle] = {}  # one per bucket

    def now(self) -> float:
        """The loop's clock (monotonic), which the wheel keeps time by."""
        return asyncio.get_running_loop().time()

    def add(self, item: Beating, delay: float) -> int:
        """Call `item.beat()` in about `delay` seconds (at the end of its tick);
        returns its slot, for `remove`."""
        loop = asyncio.get_running_loop()
        key = math.ceil((loop.time() + delay) / self._tick)
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = {}
            self._timers[key] = loop.call_at(key * self._tick, self._fire, key)
        bucket[item] = None
        return key

    def remove(self, item: Beating, key: int) -> None:
        """`item` leaves slot `key` (it closed): the wheel holds nothing of it."""
        bucket = self._buckets.get(key)
        if bucket is None:
            return
        bucket.pop(item, None)
        if not bucket:  # the last one left: its timer goes too
            del self._buckets[key]
            self._timers.pop(key).cancel()

    def __len__(self) -> int:
        return sum(len(bucket) for bucket in self._buckets.values())

    def _fire(self, key: int) -> None:
        self._timers.pop(key, None)
        bucket = self._buckets.pop(key, None)
        for item in bucket or ():
            item.beat()
