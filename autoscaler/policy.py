"""Kubernetes HPA v2 semantics for one Pods metric, as pure functions (no I/O, no clock).

Follows the HPA controller (kubernetes/kubernetes `pkg/controller/podautoscaler`):
`replica_calculator.go` `calcPlainMetricReplicas` for the metric proposal, and
`horizontal.go` `reconcileAutoscaler`, `stabilizeRecommendationWithBehaviors` and
`convertDesiredReplicasWithBehaviorRate` for min/max, stabilization windows and rate
policies. The caller passes `now` and keeps the returned `History` for the next call.

Pod classes, as the controller's `groupPods` has them:
- *ignored*: being deleted or failed; its metric is dropped;
- *unready*: not ready (the HPA: Pending); its metric is dropped, and it counts as 0
  only when the ratio calls for a scale-up (dampening it);
- *missing*: ready but without a metric; counts as 0 on a scale-up, at target on a
  scale-down;
- *ready*: ready with a metric.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from typing import Literal

PolicyType = Literal["Pods", "Percent"]
SelectPolicy = Literal["Max", "Min", "Disabled"]

DEFAULT_TOLERANCE = 0.1


@dataclass(frozen=True)
class ScalingPolicy:
    """One `HPAScalingPolicy`: at most `value` pods (or percent) per `period_seconds`."""

    type: PolicyType
    value: int
    period_seconds: int


@dataclass(frozen=True)
class ScalingRules:
    """One direction of `behavior` (`HPAScalingRules`)."""

    stabilization_window_seconds: int
    select_policy: SelectPolicy
    policies: tuple[ScalingPolicy, ...]


# The API server's defaults for `behavior` (autoscaling/v2 defaults.go).
DEFAULT_SCALE_UP = ScalingRules(
    0, "Max", (ScalingPolicy("Percent", 100, 15), ScalingPolicy("Pods", 4, 15))
)
DEFAULT_SCALE_DOWN = ScalingRules(300, "Max", (ScalingPolicy("Percent", 100, 15),))


@dataclass(frozen=True)
class Spec:
    """What the HPA spec says: one Pods metric with an AverageValue target."""

    target: float
    min_replicas: int
    max_replicas: int
    scale_up: ScalingRules = DEFAULT_SCALE_UP
    scale_down: ScalingRules = DEFAULT_SCALE_DOWN
    tolerance: float = DEFAULT_TOLERANCE


@dataclass(frozen=True)
class PodSample:
    """One pod as the source saw it: readiness and the metric value (None = missing)."""

    name: str
    value: float | None
    ready: bool = True
    ignored: bool = False  # being deleted, or failed


@dataclass(frozen=True)
class Recommendation:
    at: float
    replicas: int


@dataclass(frozen=True)
class ScaleEvent:
    at: float
    change: int  # always positive: pods added (scale-up list) or removed (scale-down list)


@dataclass(frozen=True)
class History:
    """What the controller remembers between syncs (per HPA in the real one)."""

    recommendations: tuple[Recommendation, ...] = ()
    scale_up_events: tuple[ScaleEvent, ...] = ()
    scale_down_events: tuple[ScaleEvent, ...] = ()


@dataclass(frozen=True)
class MetricProposal:
    """`calcPlainMetricReplicas`'s answer: replicas and the average over reporting pods."""

    replicas: int
    average: float
    reason: str


@dataclass(frozen=True)
class Decision:
    desired: int
    current: int
    reason: str
    history: History
    proposal: MetricProposal | None = None
    stabilized: int | None = None
    limited_by: str | None = field(default=None)


class NoMetrics(Exception):
    """No pod reported the metric: the HPA does not scale on this sync."""


def _ratio(values: Iterable[float], target: float) -> tuple[float, float]:
    """`GetMetricUsageRatio`: total / (target x count), in that order, as the controller
    computes it (dividing the average instead can round 4.0 up to 4.000000000000001)."""
    values = list(values)
    total = sum(values)
    return total / (target * len(values)), total / len(values)


def metric_replicas(
    current: int, pods: Sequence[PodSample], target: float, tolerance: float
) -> MetricProposal:
    """`calcPlainMetricReplicas` for one Pods metric with an AverageValue target."""
    metrics: dict[str, float] = {}
    unready: list[str] = []
    missing: list[str] = []
    ready_count = 0
    for pod in pods:
        if pod.ignored:
            continue
        if not pod.ready:
            unready.append(pod.name)
        elif pod.value is None:
            missing.append(pod.name)
        else:
            metrics[pod.name] = pod.value
            ready_count += 1
    if not metrics:
        raise NoMetrics("no ready pod reported the metric")

    usage_ratio, average = _ratio(metrics.values(), target)
    scale_up_with_unready = bool(unready) and usage_ratio > 1.0
    if not scale_up_with_unready and not missing:
        if abs(1.0 - usage_ratio) <= tolerance:
            return MetricProposal(current, average, "within tolerance")
        return MetricProposal(math.ceil(usage_ratio * ready_count), average, "ratio")

    # Missing pods: at target when scaling down, at 0 when scaling up. Unready pods: at 0
    # when scaling up. Both keep a partial view from moving the fleet too far.
    for name in missing:
        metrics[name] = target if usage_ratio < 1.0 else 0.0
    if scale_up_with_unready:
        for name in unready:
            metrics[name] = 0.0
    new_ratio, _ = _ratio(metrics.values(), target)
    if (
        abs(1.0 - new_ratio) <= tolerance
        or (usage_ratio < 1.0 < new_ratio)
        or (usage_ratio > 1.0 > new_ratio)
    ):
        return MetricProposal(current, average, "within tolerance after assuming missing pods")
    replicas = math.ceil(new_ratio * len(metrics))
    if (new_ratio < 1.0 and replicas > current) or (new_ratio > 1.0 and replicas < current):
        return MetricProposal(current, average, "direction reversed after assuming missing pods")
    return MetricProposal(replicas, average, "ratio with missing/unready pods assumed")


def _changed_within(events: Sequence[ScaleEvent], period: int, now: float) -> int:
    cutoff = now - period
    return sum(event.change for event in events if event.at > cutoff)


def scale_up_limit(current: int, history: History, rules: ScalingRules, now: float) -> int:
    """`calculateScaleUpLimitWithScalingRules`."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        added = _changed_within(history.scale_up_events, policy.period_seconds, now)
        removed = _changed_within(history.scale_down_events, policy.period_seconds, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposals.append(start + policy.value)
        else:  # rounded up, or a small fleet could never grow
            proposals.append(math.ceil(start * (1 + policy.value / 100)))
    return (min if rules.select_policy == "Min" else max)(proposals)


def scale_down_limit(current: int, history: History, rules: ScalingRules, now: float) -> int:
    """`calculateScaleDownLimitWithBehaviors`."""
    if rules.select_policy == "Disabled":
        return current
    proposals = []
    for policy in rules.policies:
        added = _changed_within(history.scale_up_events, policy.period_seconds, now)
        removed = _changed_within(history.scale_down_events, policy.period_seconds, now)
        start = current - added + removed
        if policy.type == "Pods":
            proposals.append(start - policy.value)
        else:  # truncated, as Go's int32() conversion does
            proposals.append(int(start * (1 - policy.value / 100)))
    # "Min" selects the smallest change, which for a scale-down is the largest count.
    return (max if rules.select_policy == "Min" else min)(proposals)


def stabilize(
    spec: Spec, history: History, current: int, desired: int, now: float
) -> tuple[int, History]:
    """`stabilizeRecommendationWithBehaviors`: the lowest recommendation of the scale-up
    window and the highest of the scale-down window bound the result."""
    up_cutoff = now - spec.scale_up.stabilization_window_seconds
    down_cutoff = now - spec.scale_down.stabilization_window_seconds
    up = desired
    down = desired
    for rec in history.recommendations:
        if rec.at > up_cutoff:
            up = min(up, rec.replicas)
        if rec.at > down_cutoff:
            down = max(down, rec.replicas)
    recommendation = min(max(current, up), down)
    # Keep only what a later window can still see; record the unstabilized proposal.
    oldest = min(up_cutoff, down_cutoff)
    kept = tuple(rec for rec in history.recommendations if rec.at >= oldest)
    return recommendation, replace(history, recommendations=(*kept, Recommendation(now, desired)))


def limit_rate(
    spec: Spec, history: History, current: int, desired: int, now: float
) -> tuple[int, str | None]:
    """`convertDesiredReplicasWithBehaviorRate`: rate policies and min/max."""
    if desired > current:
        limit = max(scale_up_limit(current, history, spec.scale_up, now), current)
        if spec.max_replicas > limit:
            allowed, reason = limit, "ScaleUpLimit"
        else:
            allowed, reason = spec.max_replicas, "TooManyReplicas"
        return (allowed, reason) if desired > allowed else (desired, None)
    if desired < current:
        limit = min(scale_down_limit(current, history, spec.scale_down, now), current)
        if spec.min_replicas < limit:
            allowed, reason = limit, "ScaleDownLimit"
        else:
            allowed, reason = spec.min_replicas, "TooFewReplicas"
        return (allowed, reason) if desired < allowed else (desired, None)
    return desired, None


def decide(
    spec: Spec, history: History, current: int, pods: Sequence[PodSample], now: float
) -> Decision:
    """One sync of `reconcileAutoscaler` with `behavior` set."""
    if current == 0 and spec.min_replicas != 0:
        return Decision(0, current, "scaled to zero: autoscaling is off", history)
    if current > spec.max_replicas:
        return Decision(spec.max_replicas, current, "current above max", history)
    if current < spec.min_replicas:
        return Decision(spec.min_replicas, current, "current below min", history)
    try:
        proposal = metric_replicas(current, pods, spec.target, spec.tolerance)
    except NoMetrics as error:
        return Decision(current, current, str(error), history)
    stabilized, history = stabilize(spec, history, current, proposal.replicas, now)
    desired, limited_by = limit_rate(spec, history, current, stabilized, now)
    base = f"average {proposal.average:g} vs target {spec.target:g}"
    if desired > current:
        reason = f"{base}: above target"
    elif desired < current:
        reason = f"{base}: below target"
    elif stabilized != proposal.replicas:
        reason = f"{base}: held by the stabilization window (wanted {proposal.replicas})"
    else:
        reason = f"{base}: {proposal.reason}" if proposal.replicas == current else base
    if limited_by is not None:
        reason += f" ({limited_by}, wanted {stabilized})"
    return Decision(desired, current, reason, history, proposal, stabilized, limited_by)


def record_scale(spec: Spec, history: History, before: int, after: int, now: float) -> History:
    """`storeScaleEvent`: remember a rescale for the rate policies; forget what no
    policy period can see any more."""
    # Both directions' policies count both lists, so keep what the longest period sees.
    policies = (*spec.scale_up.policies, *spec.scale_down.policies)
    cutoff = now - max((p.period_seconds for p in policies), default=0)
    up = tuple(e for e in history.scale_up_events if e.at > cutoff)
    down = tuple(e for e in history.scale_down_events if e.at > cutoff)
    if after > before:
        up = (*up, ScaleEvent(now, after - before))
    elif after < before:
        down = (*down, ScaleEvent(now, before - after))
    return replace(history, scale_up_events=up, scale_down_events=down)
