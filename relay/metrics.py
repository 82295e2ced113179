"""The relay's Prometheus metrics, one series per link (`link` = the far region).
The names are a contract: the alert rules (infra/observability.py) and the README read them."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, ProcessCollector

from server.core.jsonlog import OncePerBurst

log = logging.getLogger("iofleet.relay")


@dataclass
class RelayMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)
    _bad_log: OncePerBurst = field(default_factory=lambda: OncePerBurst(window=10.0))

    def __post_init__(self) -> None:
        r = self.registry
        ProcessCollector(registry=r)
        self.link_up = Gauge(
            "iofleet_relay_link_up",
            "1 while the link to the far region's Redis takes publishes and listens.",
            ["link"],
            registry=r,
        )
        self.held = Gauge(
            "iofleet_relay_link_held_messages",
            "Messages waiting in the link's outbox for the far region.",
            ["link"],
            registry=r,
        )
        self.lag = Gauge(
            "iofleet_relay_link_lag_seconds",
            "Age of the oldest message the link still holds (0: nothing waits).",
            ["link"],
            registry=r,
        )
        self.forwarded = Counter(
            "iofleet_relay_forwarded_messages",
            "Messages the far region's Redis took from this relay.",
            ["link"],
            registry=r,
        )
        self.link_bytes = Counter(
            "iofleet_relay_link_bytes",
            "Bytes of messages (payloads) sent to the far region.",
            ["link"],
            registry=r,
        )
        self.dropped = Counter(
            "iofleet_relay_dropped_messages",
            "Messages the link's outbox dropped (overflow, expired, shutdown, handover).",
            ["link", "reason"],
            registry=r,
        )
        self.link_failures = Counter(
            "iofleet_relay_link_failures",
            "Times the link to the far region failed (publish or subscription).",
            ["link"],
            registry=r,
        )
        self.refused = Counter(
            "iofleet_relay_refused_duplicates",
            "Messages the far Redis refused: they had crossed already (relay.guard).",
            ["link"],
            registry=r,
        )
        self.catchups = Counter(
            "iofleet_relay_catchups",
            "Catch-ups from the recovery stream after the relay began hearing its region.",
            ["link"],
            registry=r,
        )
        self.catchup_messages = Counter(
            "iofleet_relay_catchup_messages",
            "Messages a catch-up brought from the near stream (published while unheard).",
            ["link"],
            registry=r,
        )
        self.catchup_seconds = Gauge(
            "iofleet_relay_catchup_seconds",
            "The last catch-up: from hearing the region again to its messages queued.",
            ["link"],
            registry=r,
        )
        self.far_rooms = Gauge(
            "iofleet_relay_far_rooms",
            "Rooms the far region has members of (what the link forwards).",
            ["link"],
            registry=r,
        )
        self.local_rooms = Gauge(
            "iofleet_relay_local_rooms",
            "Rooms this region has members of (the interest announced to far relays).",
            registry=r,
        )
        self.local_up = Gauge(
            "iofleet_relay_local_up",
            "1 while the relay hears this region's Redis.",
            registry=r,
        )
        self.unaddressed = Counter(
            "iofleet_relay_unaddressed_messages",
            "Messages for one node that no region announced (a node just started, or"
            " gone): sent to every far region.",
            registry=r,
        )
        self.bad_messages = Counter(
            "iofleet_relay_bad_messages",
            "Messages the relay could not read (not a JSON object); left alone.",
            registry=r,
        )

    def bad_message(self, what: str) -> None:
        """A message the relay cannot read: counted, one log line per burst, left alone
        (the servers decide what to do with it; the relay forwards nothing of it)."""
        self.bad_messages.inc()
        if self._bad_log.should_log():
            log.warning(
                "relay: a message it cannot read was left alone",
                extra={
                    "event": "relay.bad_message",
                    "what": what,
                    "suppressed": self._bad_log.take_suppressed(),
                },
            )
