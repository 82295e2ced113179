"""The control loop: source -> policy -> actuator, every sync period, with a bounded
timeline of what it saw and decided (for `/status`)."""

from __future__ import annotations

import asyncio
import collections
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import Any

from autoscaler import policy
from autoscaler.model import Actuator, Source
from autoscaler.settings import Settings

log = logging.getLogger("iofleet.autoscaler.controller")
TIMELINE_POINTS = 720  # 3 hours at the default 15 s sync


def spec_from_settings(settings: Settings) -> policy.Spec:
    down = [policy.ScalingPolicy(
        "Percent", settings.scale_down_percent, settings.scale_down_period_seconds
    )]  # fmt: skip
    if settings.scale_down_pods is not None:
        down.append(
            policy.ScalingPolicy(
                "Pods", settings.scale_down_pods, settings.scale_down_period_seconds
            )
        )
    return policy.Spec(
        target=settings.target_connections,
        min_replicas=settings.min,
        max_replicas=settings.max,
        tolerance=settings.tolerance,
        scale_up=policy.ScalingRules(
            settings.scale_up_stabilization_seconds,
            settings.scale_up_select_policy,
            (
                policy.ScalingPolicy(
                    "Percent", settings.scale_up_percent, settings.scale_up_period_seconds
                ),
                policy.ScalingPolicy(
                    "Pods", settings.scale_up_pods, settings.scale_up_period_seconds
                ),
            ),
        ),
        scale_down=policy.ScalingRules(
            settings.scale_down_stabilization_seconds,
            settings.scale_down_select_policy,
            tuple(down),
        ),
    )


@dataclass(frozen=True)
class TimelinePoint:
    at: float
    connections: float
    ready: int
    current: int
    desired: int
    reason: str
    acted: bool


class Controller:
    def __init__(
        self,
        spec: policy.Spec,
        source: Source,
        actuator: Actuator,
        sync_seconds: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.spec = spec
        self.source = source
        self.actuator = actuator
        self.sync_seconds = sync_seconds
        self._clock = clock
        self.history = policy.History()
        self.timeline: collections.deque[TimelinePoint] = collections.deque(maxlen=TIMELINE_POINTS)
        self.last: policy.Decision | None = None
        self._seeded = False

    async def sync(self) -> policy.Decision:
        now = self._clock()
        nodes = self.source.nodes()
        await self.actuator.rank(nodes)
        current = await self.actuator.current_replicas()
        if not self._seeded:
            # A restarted autoscaler must not skip the scale-down window: remember the
            # count it found as a recommendation (the HPA keeps this in its controller).
            self.history = policy.History(recommendations=(policy.Recommendation(now, current),))
            self._seeded = True
        samples = [
            policy.PodSample(n.name, n.connections, ready=n.ready, ignored=n.deleting)
            for n in nodes
        ]
        decision = policy.decide(self.spec, self.history, current, samples, now)
        self.history = decision.history
        acted = False
        if decision.desired != current and self.actuator.owns_replicas:
            await self.actuator.scale(decision.desired)
            self.history = policy.record_scale(
                self.spec, self.history, current, decision.desired, now
            )
            acted = True
            log.info(
                "scaled %d -> %d: %s", current, decision.desired, decision.reason,
                extra={"event": "controller.scaled"},
            )  # fmt: skip
        self.last = decision
        self.timeline.append(
            TimelinePoint(
                at=now,
                connections=sum(n.connections or 0.0 for n in nodes if not n.deleting),
                ready=sum(1 for n in nodes if n.ready and not n.deleting),
                current=current,
                desired=decision.desired,
                reason=decision.reason,
                acted=acted,
            )
        )
        return decision

    async def run(self) -> None:
        """Sync every period; a failed sync is logged and retried at the next one."""
        while True:
            started = time.monotonic()
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning("sync failed: %s", error, extra={"event": "controller.sync_failed"})
            await asyncio.sleep(max(0.0, self.sync_seconds - (time.monotonic() - started)))

    def status(self) -> dict[str, Any]:
        now = self._clock()
        nodes = sorted(self.source.nodes(), key=lambda n: n.name)
        last = self.last
        return {
            "now": now,
            "target_connections": self.spec.target,
            "min": self.spec.min_replicas,
            "max": self.spec.max_replicas,
            "owns_replicas": self.actuator.owns_replicas,
            "sync_seconds": self.sync_seconds,
            "scrape_interval": self.source.scrape_interval,
            "current": last.current if last else None,
            "desired": last.desired if last else None,
            "reason": last.reason if last else None,
            "nodes": [
                {
                    "name": n.name,
                    "address": n.address,
                    "ready": n.ready,
                    "draining": n.deleting or not n.ready,
                    "connections": n.connections,
                    "age_s": None if n.scraped_at is None else round(now - n.scraped_at, 3),
                    "error": n.error,
                    "deletion_cost": n.deletion_cost,
                }
                for n in nodes
            ],
            "timeline": [asdict(point) for point in self.timeline],
        }
