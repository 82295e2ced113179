"""Prometheus metrics. The names are a contract (DESIGN.md): dashboards,
alerts and the autoscaler read them."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.metrics_core import Metric
from prometheus_client.registry import Collector

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
        self.messages_received = Counter(
            "iofleet_messages_received",
            "Events received from clients, by event (unknown names fold into 'other').",
            ["event"],
            registry=r,
        )
        self.messages_sent = Counter(
            "iofleet_messages_sent", "Socket.IO packets sent to clients.", registry=r
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
        self.event_handler_seconds = Histogram(
            "iofleet_event_handler_seconds",
            "Time spent in application event handlers.",
            ["event"],
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
