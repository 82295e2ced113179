"""Prometheus metrics. The names are a contract (DESIGN.md): dashboards,
alerts and the autoscaler read them."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

# `*_created` series double the output and nothing here reads them.
disable_created_metrics()  # type: ignore[no-untyped-call]

# Socket.IO latency is mostly sub-millisecond; the tail matters up to seconds.
HANDLER_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class PlainCounter(Collector):
    """A counter exposed under its full name.

    prometheus-client files a Counter named `x_total` under the family `x`,
    which would collide with the gauge `iofleet_connections`; the contract
    wants both `iofleet_connections` (gauge) and `iofleet_connections_total`.
    """

    def __init__(self, name: str, documentation: str, registry: CollectorRegistry) -> None:
        self.name = name
        self.documentation = documentation
        self.value = 0.0
        registry.register(self)

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount

    def describe(self) -> list[Metric]:
        # Nothing to check for duplicates: the family name is the gauge's on purpose.
        return []

    def collect(self) -> Iterator[Metric]:
        family = self.name.removesuffix("_total")
        metric = Metric(family, self.documentation, "counter")
        metric.add_sample(self.name, {}, self.value)
        yield metric


class PlainChild:
    """One labelled series of a `PlainCounterFamily`."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value = 0.0

    def inc(self, amount: float = 1.0) -> None:
        self.value += amount


class PlainCounterFamily(Collector):
    """A labelled counter for the per-event path: a float per label value, read
    when scraped. prometheus-client's `Counter` takes a lock on every increment,
    which buys nothing on one event-loop thread and was a tenth of an echo round
    trip's cost with the other per-event metrics. Same exposition as a `Counter`
    named `name` (the samples are `<name>_total`)."""

    def __init__(
        self, name: str, documentation: str, label: str, registry: CollectorRegistry
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self._children: dict[str, PlainChild] = {}
        registry.register(self)

    def labels(self, value: str) -> PlainChild:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = PlainChild()
        return child

    def describe(self) -> list[Metric]:
        return [Metric(self.name, self.documentation, "counter")]

    def collect(self) -> Iterator[Metric]:
        metric = Metric(self.name, self.documentation, "counter")
        for value, child in self._children.items():
            metric.add_sample(f"{self.name}_total", {self.label: value}, child.value)
        yield metric


class PlainHistogramChild:
    """One labelled series of a `PlainHistogram`: a count per bucket and a sum."""

    __slots__ = ("bounds", "counts", "sum")

    def __init__(self, bounds: Sequence[float]) -> None:
        self.bounds = bounds
        self.counts = [0] * (len(bounds) + 1)  # the last is +Inf
        self.sum = 0.0

    def observe(self, amount: float) -> None:
        self.counts[bisect_left(self.bounds, amount)] += 1
        self.sum += amount


class PlainHistogram(Collector):
    """A labelled histogram for the per-event path (see `PlainCounterFamily`):
    the same exposition as prometheus-client's `Histogram` (cumulative `le`
    buckets, `_count`, `_sum`), without a lock per observation."""

    def __init__(
        self,
        name: str,
        documentation: str,
        label: str,
        buckets: Sequence[float],
        registry: CollectorRegistry,
    ) -> None:
        self.name = name
        self.documentation = documentation
        self.label = label
        self.bounds = tuple(sorted(buckets))
        self._children: dict[str, PlainHistogramChild] = {}
        registry.register(self)

    def labels(self, value: str) -> PlainHistogramChild:
        child = self._children.get(value)
        if child is None:
            child = self._children[value] = PlainHistogramChild(self.bounds)
        return child

    def describe(self) -> list[Metric]:
        return [HistogramMetricFamily(self.name, self.documentation, labels=[self.label])]

    def collect(self) -> Iterator[Metric]:
        family = HistogramMetricFamily(self.name, self.documentation, labels=[self.label])
        # prometheus-client's own `le` format, as its Histogram writes it.
        edges = [*(floatToGoString(b) for b in self.bounds), "+Inf"]  # type: ignore[no-untyped-call]
        for value, child in self._children.items():
            running, buckets = 0.0, []
            for edge, count in zip(edges, child.counts, strict=True):
                running += count
                buckets.append((edge, running))
            family.add_metric([value], buckets, child.sum)
        yield family


@dataclass
class Metrics:
    """One registry per server instance, so tests can run several in a process."""

    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        # The standard process_* series (resident memory, CPU seconds, open fds,
        # start time): memory that grows while iofleet_connections stays flat is
        # what the infra alert watches for.
        ProcessCollector(registry=r)
        self.engineio_sockets = Gauge(
            "iofleet_engineio_sockets",
            "Engine.IO sockets this node holds, with or without a Socket.IO connection.",
            registry=r,
        )
        self.event_loop_tasks = Gauge(
            "iofleet_event_loop_tasks", "asyncio tasks alive in the server process.", registry=r
        )
        self.connections = Gauge(
            "iofleet_connections", "Socket.IO connections open on this node.", registry=r
        )
        self.connections_total = PlainCounter(
            "iofleet_connections_total", "Socket.IO connections accepted.", registry=r
        )
        self.connections_rejected = Counter(
            "iofleet_connections_rejected",
            "Connections refused, by reason.",
            ["reason"],
            registry=r,
        )
        # The per-event series: plain numbers, no lock per event (PlainCounter...).
        self.messages_received = PlainCounterFamily(
            "iofleet_messages_received",
            "Events received from clients, by event (unknown names fold into 'other').",
            "event",
            registry=r,
        )
        self.messages_sent = PlainCounter(
            "iofleet_messages_sent_total", "Socket.IO packets sent to clients.", registry=r
        )
        self.slow_consumers = Counter(
            "iofleet_slow_consumers",
            "Connections dropped for not reading what they were sent (outbound queue full).",
            registry=r,
        )
        self.events_rejected = Counter(
            "iofleet_events_rejected",
            "Client packets refused, by reason (rate_limit, oversize, malformed).",
            ["reason"],
            registry=r,
        )
        self.event_handler_seconds = PlainHistogram(
            "iofleet_event_handler_seconds",
            "Time spent in application event handlers.",
            "event",
            buckets=HANDLER_BUCKETS,
            registry=r,
        )
        self.rooms = Gauge("iofleet_rooms", "Application rooms on this node.", registry=r)
        self.event_loop_lag = Gauge(
            "iofleet_event_loop_lag_seconds",
            "How late the event loop ran a timer (last sample).",
            registry=r,
        )
        self.draining = Gauge("iofleet_draining", "1 while this node drains.", registry=r)
        self.fanout_publish_failures = Counter(
            "iofleet_fanout_publish_failures",
            "Fan-out messages Redis did not take at once (they wait in the outbox).",
            registry=r,
        )
        self.fanout_dropped = Counter(
            "iofleet_fanout_dropped",
            "Fan-out messages other nodes miss: dropped from the outbox, by reason "
            "(overflow, expired, shutdown).",
            ["reason"],
            registry=r,
        )
        self.fanout_outbox = Gauge(
            "iofleet_fanout_outbox", "Fan-out messages waiting in the outbox for Redis.", registry=r
        )
        self.fanout_outages = Counter(
            "iofleet_fanout_outages",
            "Times the Redis subscription was lost (the fan-out degraded; the node stays ready).",
            registry=r,
        )
        self.recoveries = Counter(
            "iofleet_recoveries",
            "Reconnects that asked for connection state recovery, by outcome (recovered, "
            "unknown_session, offset_trimmed, auth_mismatch, in_use, error).",
            ["outcome"],
            registry=r,
        )
        self.recovery_replayed = Counter(
            "iofleet_recovery_replayed",
            "Events replayed to recovered connections (what they missed while away).",
            registry=r,
        )
        self.fanout_up = Gauge(
            "iofleet_fanout_up", "1 when the Redis fan-out is subscribed (or unused).", registry=r
        )
