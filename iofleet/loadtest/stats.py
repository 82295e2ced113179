"""What a load test counts: mergeable latency histograms and one-second ticks.

A histogram keeps counts in logarithmic buckets (2 % wide), so recording is O(1),
memory stays small however long the run, and ticks from several generator
processes merge by adding counts.
"""

from __future__ import annotations

import math
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, Literal

ErrorKind = Literal["refused", "timeout", "disconnected", "rate_limited", "lost"]
ERROR_KINDS: tuple[ErrorKind, ...] = ("refused", "timeout", "disconnected", "rate_limited", "lost")

_GROWTH = 1.02
_LOG_GROWTH = math.log(_GROWTH)


@dataclass
class Histogram:
    """Latencies in milliseconds; percentiles within 2 %, the maximum exact."""

    buckets: Counter[int] = field(default_factory=Counter)
    count: int = 0
    max: float = 0.0
    total: float = 0.0

    def record(self, ms: float) -> None:
        micro = ms * 1000.0
        self.buckets[0 if micro < 1.0 else int(math.log(micro) / _LOG_GROWTH) + 1] += 1
        self.count += 1
        self.total += ms
        self.max = max(self.max, ms)

    def merge(self, other: Histogram) -> None:
        self.buckets.update(other.buckets)
        self.count += other.count
        self.total += other.total
        self.max = max(self.max, other.max)

    def percentile(self, p: float) -> float:
        if not self.count:
            return 0.0
        rank = max(1, math.ceil(self.count * p / 100))
        seen = 0
        for index in sorted(self.buckets):
            seen += self.buckets[index]
            if seen >= rank:
                if index == 0:
                    return 0.0
                # The bucket's upper edge, never above the exact maximum.
                return min(self.max, _GROWTH**index / 1000.0)
        return self.max

    def summary(self) -> dict[str, float]:
        return {
            "count": self.count,
            "p50": round(self.percentile(50), 3),
            "p95": round(self.percentile(95), 3),
            "p99": round(self.percentile(99), 3),
            "max": round(self.max, 3),
            "mean": round(self.total / self.count, 3) if self.count else 0.0,
        }


@dataclass
class Tick:
    """One second of one generator process (or of all, once merged)."""

    second: int
    phase: str = ""
    connections: int = 0
    """Open at the end of the second (a gauge)."""
    vusers: int = 0
    """Virtual users alive at the end of the second (a gauge)."""
    connect_attempts: int = 0
    connects: int = 0
    emitted: int = 0
    acked: int = 0
    delivered: int = 0
    errors: Counter[str] = field(default_factory=Counter)
    reasons: Counter[str] = field(default_factory=Counter)
    connect_ms: Histogram = field(default_factory=Histogram)
    ack_ms: Histogram = field(default_factory=Histogram)
    delivery_ms: Histogram = field(default_factory=Histogram)

    def merge(self, other: Tick) -> None:
        """Add another process's same second (gauges add too: they are per process)."""
        self.phase = self.phase or other.phase
        self.connections += other.connections
        self.vusers += other.vusers
        self.connect_attempts += other.connect_attempts
        self.connects += other.connects
        self.emitted += other.emitted
        self.acked += other.acked
        self.delivered += other.delivered
        self.errors.update(other.errors)
        self.reasons.update(other.reasons)
        self.connect_ms.merge(other.connect_ms)
        self.ack_ms.merge(other.ack_ms)
        self.delivery_ms.merge(other.delivery_ms)

    def error(self, kind: ErrorKind, reason: str = "") -> None:
        self.errors[kind] += 1
        key = f"{kind}: {reason[:120]}"
        # Reasons are for diagnosis; keep the set small.
        if reason and (key in self.reasons or len(self.reasons) < 20):
            self.reasons[key] += 1


@dataclass
class Totals:
    """The whole run: sums of the ticks, and the ticks themselves (the time series)."""

    by_second: dict[int, Tick] = field(default_factory=dict)
    errors_so_far: Counter[str] = field(default_factory=Counter)

    @property
    def ticks(self) -> list[Tick]:
        return [self.by_second[s] for s in sorted(self.by_second)]

    def add(self, tick: Tick) -> None:
        self.errors_so_far.update(tick.errors)
        mine = self.by_second.get(tick.second)
        if mine is None:
            self.by_second[tick.second] = tick
        else:
            mine.merge(tick)

    def get(self, second: int) -> Tick:
        return self.by_second[second]

    def overall(self) -> Tick:
        total = Tick(second=-1)
        for tick in self.ticks:
            connections, vusers = total.connections, total.vusers
            total.merge(tick)
            total.connections = max(connections, tick.connections)  # peak, not a sum
            total.vusers = max(vusers, tick.vusers)
        return total

    def summary(self) -> dict[str, Any]:
        total = self.overall()
        seconds = max(1, len(self.by_second))
        return {
            "seconds": len(self.by_second),
            "peak_connections": total.connections,
            "peak_vusers": total.vusers,
            "connect_attempts": total.connect_attempts,
            "connects": total.connects,
            "emitted": total.emitted,
            "acked": total.acked,
            "delivered": total.delivered,
            "emitted_per_second": round(total.emitted / seconds, 1),
            "delivered_per_second": round(total.delivered / seconds, 1),
            "errors": {kind: total.errors.get(kind, 0) for kind in ERROR_KINDS},
            "error_reasons": dict(total.reasons.most_common(10)),
            "connect_ms": total.connect_ms.summary(),
            "ack_ms": total.ack_ms.summary(),
            "delivery_ms": total.delivery_ms.summary(),
        }

    def series(self) -> list[dict[str, Any]]:
        return [
            {
                "second": t.second,
                "phase": t.phase,
                "connections": t.connections,
                "emitted": t.emitted,
                "delivered": t.delivered,
                "errors": sum(t.errors.values()),
                "ack_p50_ms": round(t.ack_ms.percentile(50), 3),
                "ack_p99_ms": round(t.ack_ms.percentile(99), 3),
                "delivery_p50_ms": round(t.delivery_ms.percentile(50), 3),
                "delivery_p99_ms": round(t.delivery_ms.percentile(99), 3),
                "connect_p99_ms": round(t.connect_ms.percentile(99), 3),
            }
            for t in self.ticks
        ]
