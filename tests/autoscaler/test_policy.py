"""Table tests of the HPA v2 policy. Each expected number is worked out by hand beside
its case, from the Kubernetes docs ("Algorithm details", "Configurable scaling
behavior") and the controller's `replica_calculator.go` / `horizontal.go`."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from autoscaler.policy import (
    DEFAULT_SCALE_DOWN,
    DEFAULT_SCALE_UP,
    History,
    NoMetrics,
    PodSample,
    Recommendation,
    ScaleEvent,
    ScalingPolicy,
    ScalingRules,
    Spec,
    decide,
    metric_replicas,
    record_scale,
)

NOW = 10_000.0
T = 20.0  # target connections per pod in every table below


def ready(*values: float | None) -> list[PodSample]:
    return [PodSample(f"p{i}", value) for i, value in enumerate(values)]


@dataclass
class MetricCase:
    id: str
    current: int
    pods: list[PodSample]
    expected: int


METRIC_CASES = [
    # 3 x 30 = 90; ratio 90 / (20 x 3) = 1.5; ceil(1.5 x 3) = 5.
    MetricCase("scale-up", 3, ready(30, 30, 30), 5),
    # ratio 63 / 60 = 1.05; |1 - 1.05| = 0.05 <= 0.1: keep 3.
    MetricCase("within tolerance", 3, ready(21, 21, 21), 3),
    # ratio 88 / 80 = 1.1, but in float64 1 - 1.1 = -0.10000000000000009, which is > 0.1,
    # so the controller scales: ceil(1.1 x 4) = ceil(4.4) = 5.
    MetricCase("tolerance edge in float64", 4, ready(22, 22, 22, 22), 5),
    # ratio 76 / 80 = 0.95 -> within tolerance: keep 4.
    MetricCase("slightly below, within tolerance", 4, ready(19, 19, 19, 19), 4),
    # ratio 260 / (20 x 3) = 4.333...; x 3 = 13.0 in float64: 13. Dividing the average
    # first, (260 / 3) / 20 x 3 = 13.000000000000002, would give 14: the controller's order.
    MetricCase("ratio computed as the controller does", 3, ready(60, 100, 100), 13),
    # ratio 20 / 80 = 0.25; ceil(0.25 x 4) = 1.
    MetricCase("scale-down", 4, ready(5, 5, 5, 5), 1),
    # Missing on scale-up: ratio 80 / 40 = 2 > 1, so p2 counts 0:
    # 80 / (20 x 3) = 1.333; ceil(1.333 x 3) = 4 (without the missing pod: ceil(2 x 2) = 4 too,
    # so take a stronger case below).
    MetricCase("missing pod at 0 on scale-up", 3, ready(40, 40, None), 4),
    # ratio 100 / 40 = 2.5; p2 at 0: 100 / 60 = 1.667; ceil(1.667 x 3) = 5
    # (ignoring the missing pod instead: ceil(2.5 x 2) = 5; with it at target: 120/60=2 -> 6).
    MetricCase("missing pod at 0, not at target", 3, ready(50, 50, None), 5),
    # Missing on scale-down: ratio 10 / 40 = 0.25 < 1, so p2 counts at target 20:
    # 30 / 60 = 0.5; ceil(0.5 x 3) = 2 (ignoring it would give ceil(0.25 x 2) = 1).
    MetricCase("missing pod at target on scale-down", 3, ready(5, 5, None), 2),
    # Unready pod on scale-up: ratio 60 / 40 = 1.5 > 1, unready counts 0:
    # 60 / 60 = 1.0 -> within tolerance: keep 3.
    MetricCase(
        "unready pod at 0 on scale-up",
        3,
        [PodSample("a", 30), PodSample("b", 30), PodSample("c", 50, ready=False)],
        3,
    ),
    # Unready pod on scale-down: ratio 20 / 40 = 0.5, unready set aside: ceil(0.5 x 2) = 1.
    MetricCase(
        "unready pod set aside on scale-down",
        3,
        [PodSample("a", 10), PodSample("b", 10), PodSample("c", 0, ready=False)],
        1,
    ),
    # A pod being deleted drops out: 40 / 40 = 1.0 -> keep 3.
    MetricCase(
        "deleting pod ignored",
        3,
        [PodSample("a", 20), PodSample("b", 20), PodSample("c", 500, ignored=True)],
        3,
    ),
    # ratio 30 / 20 = 1.5 > 1; three missing at 0: 30 / 80 = 0.375 < 1: direction flips,
    # keep 4.
    MetricCase("direction flips after assuming missing", 4, ready(30, None, None, None), 4),
    # ratio 60 / 20 = 3; missing p1 at 0: 60 / 40 = 1.5; ceil(1.5 x 2) = 3 < current 5 while
    # the ratio says up: keep 5.
    MetricCase(
        "fewer than current while ratio > 1",
        5,
        [
            PodSample("a", 60),
            PodSample("b", None),
            *[PodSample(f"gone{i}", 0, ignored=True) for i in range(3)],
        ],
        5,
    ),
]


@pytest.mark.parametrize("case", METRIC_CASES, ids=lambda c: c.id)
def test_metric_replicas(case: MetricCase) -> None:
    proposal = metric_replicas(case.current, case.pods, T, 0.1)
    assert proposal.replicas == case.expected


def test_no_metric_from_any_pod_means_no_proposal() -> None:
    with pytest.raises(NoMetrics):
        metric_replicas(2, [PodSample("a", 50, ready=False), PodSample("b", None)], T, 0.1)
    with pytest.raises(NoMetrics):
        metric_replicas(1, [PodSample("a", 5, ignored=True)], T, 0.1)


def spec(
    up: ScalingRules = DEFAULT_SCALE_UP,
    down: ScalingRules = DEFAULT_SCALE_DOWN,
    lo: int = 2,
    hi: int = 20,
) -> Spec:
    return Spec(target=T, min_replicas=lo, max_replicas=hi, scale_up=up, scale_down=down)


@dataclass
class DecideCase:
    id: str
    spec: Spec
    current: int
    pods: list[PodSample]
    expected: int
    history: History = History()  # noqa: RUF009 - frozen, safe to share
    limited_by: str | None = None


UP_MIN = ScalingRules(0, "Min", DEFAULT_SCALE_UP.policies)
UP_OFF = ScalingRules(0, "Disabled", DEFAULT_SCALE_UP.policies)
UP_WINDOW_60 = ScalingRules(60, "Max", DEFAULT_SCALE_UP.policies)
SLOW_DOWN = (ScalingPolicy("Percent", 50, 60), ScalingPolicy("Pods", 1, 60))
DOWN_MIN = ScalingRules(0, "Min", SLOW_DOWN)
DOWN_MAX = ScalingRules(0, "Max", SLOW_DOWN)
DOWN_OFF = ScalingRules(0, "Disabled", SLOW_DOWN)

DECIDE_CASES = [
    # Proposal ceil(100 x 2 / 40 x 2) = 10. Default scale-up limit: Percent 100 -> 2 x 2 = 4,
    # Pods 4 -> 2 + 4 = 6; Max -> 6.
    DecideCase(
        "default up limit: 4 pods/15s wins",
        spec(),
        2,
        ready(100, 100),
        6,
        limited_by="ScaleUpLimit",
    ),
    # current 8: Percent 100 -> 16, Pods 4 -> 12; Max -> 16; proposal ceil(50/20 x 8) = 20 -> 16.
    DecideCase(
        "default up limit: 100%/15s wins",
        spec(),
        8,
        ready(*[50] * 8),
        16,
        limited_by="ScaleUpLimit",
    ),
    # Same as the first case with selectPolicy Min: min(4, 6) = 4.
    DecideCase(
        "selectPolicy Min on scale-up",
        spec(up=UP_MIN),
        2,
        ready(100, 100),
        4,
        limited_by="ScaleUpLimit",
    ),
    # Disabled: the limit is the current count, 2.
    DecideCase(
        "scale-up disabled", spec(up=UP_OFF), 2, ready(100, 100), 2, limited_by="ScaleUpLimit"
    ),
    # Proposal ceil(2 x 3) = 6; limit max(6, 7) = 7 > max 5 -> TooManyReplicas, 5.
    DecideCase("max clamps", spec(hi=5), 3, ready(40, 40, 40), 5, limited_by="TooManyReplicas"),
    # 4 pods were added 10 s ago (2 -> 6): period start 6 - 4 = 2; Percent -> 4, Pods -> 6;
    # limit 6 = current: no scale-up this period although the proposal is 12.
    DecideCase(
        "scale-up events in the period hold the limit",
        spec(),
        6,
        ready(*[40] * 6),
        6,
        History(scale_up_events=(ScaleEvent(NOW - 10, 4),)),
        "ScaleUpLimit",
    ),
    # The same event 16 s ago is outside the 15 s period: start 6; Percent -> 12, Pods -> 10;
    # proposal ceil(2 x 6) = 12 <= 12: 12.
    DecideCase(
        "events older than the period do not count",
        spec(),
        6,
        ready(*[40] * 6),
        12,
        History(scale_up_events=(ScaleEvent(NOW - 16, 4),)),
    ),
    # Scale-up window 60 s holds a recommendation of 3 from 30 s ago: up = min(6, 3) = 3;
    # result min(max(3, 3), max(6, 3)) = 3.
    DecideCase(
        "scale-up stabilization window",
        spec(up=UP_WINDOW_60),
        3,
        ready(40, 40, 40),
        3,
        History(recommendations=(Recommendation(NOW - 30, 3),)),
    ),
    # Proposal ceil(20 / 100 x 5) = 1; the default 300 s scale-down window holds a
    # recommendation of 5 from 100 s ago: down = max(1, 5) = 5 -> stay at 5.
    DecideCase(
        "scale-down stabilization window holds",
        spec(),
        5,
        ready(*[4] * 5),
        5,
        History(recommendations=(Recommendation(NOW - 100, 5),)),
    ),
    # The same recommendation 301 s ago is outside the window: 1; limit Percent 100 ->
    # int(5 x 0) = 0; min 2 > 0 -> TooFewReplicas, 2.
    DecideCase(
        "after the window: down to min",
        spec(),
        5,
        ready(*[4] * 5),
        2,
        History(recommendations=(Recommendation(NOW - 301, 5),)),
        "TooFewReplicas",
    ),
    # Proposal ceil(20 / 200 x 10) = 1. Percent 50 -> int(10 x 0.5) = 5, Pods 1 -> 9.
    # Min (the smallest change) -> 9.
    DecideCase(
        "selectPolicy Min on scale-down",
        spec(down=DOWN_MIN),
        10,
        ready(*[2] * 10),
        9,
        limited_by="ScaleDownLimit",
    ),
    # Max (the largest change) -> min(5, 9) = 5.
    DecideCase(
        "selectPolicy Max on scale-down",
        spec(down=DOWN_MAX),
        10,
        ready(*[2] * 10),
        5,
        limited_by="ScaleDownLimit",
    ),
    # 5 pods removed 30 s ago (10 -> 5): start 5 + 5 = 10; Percent -> 5, Pods -> 9; Max ->
    # 5 = current: no further scale-down within the 60 s period.
    DecideCase(
        "scale-down events in the period hold the limit",
        spec(down=DOWN_MAX),
        5,
        ready(*[2] * 5),
        5,
        History(scale_down_events=(ScaleEvent(NOW - 30, 5),)),
        "ScaleDownLimit",
    ),
    # Disabled: limit = current 10.
    DecideCase(
        "scale-down disabled",
        spec(down=DOWN_OFF),
        10,
        ready(*[2] * 10),
        10,
        limited_by="ScaleDownLimit",
    ),
    # Current above max 10: desired 10 whatever the metric says.
    DecideCase("current above max", spec(hi=10), 12, ready(*[1] * 12), 10),
    # Current below min 2: desired 2.
    DecideCase("current below min", spec(), 1, ready(100), 2),
    # Current 0 with min 2: autoscaling is off, desired 0 (someone scaled to zero).
    DecideCase("scaled to zero stays off", spec(), 0, [], 0),
    # No pod reports: keep the current count.
    DecideCase("no metrics: no change", spec(), 3, ready(None, None, None), 3),
]


@pytest.mark.parametrize("case", DECIDE_CASES, ids=lambda c: c.id)
def test_decide(case: DecideCase) -> None:
    decision = decide(case.spec, case.history, case.current, case.pods, NOW)
    assert decision.desired == case.expected, decision.reason
    assert decision.limited_by == case.limited_by


def test_decide_records_the_unstabilized_proposal_and_forgets_old_ones() -> None:
    history = History(recommendations=(Recommendation(NOW - 400, 9), Recommendation(NOW - 100, 5)))
    decision = decide(spec(), history, 5, ready(*[4] * 5), NOW)
    # 400 s old is outside both windows (0 s, 300 s): dropped. The new proposal, 1, is
    # recorded as proposed, not as stabilized (5).
    assert decision.history.recommendations == (
        Recommendation(NOW - 100, 5),
        Recommendation(NOW, 1),
    )


def test_a_falling_load_steps_down_only_after_the_window() -> None:
    """Sync every 15 s from 6 pods at 5 connections: the proposal is 2 from the start,
    but the 300 s window holds 6 (the recommendation recorded at t=0 is 6) until it
    leaves the window at t=300 (strictly after: at t=300 a sample at 0 is no longer
    after the cutoff), then the default 100 %/15 s and min 2 give 2 at once."""
    s = spec()
    history = History(recommendations=(Recommendation(0, 6),))
    current = 6
    seen = []
    for t in range(15, 316, 15):
        decision = decide(s, history, current, ready(*[5] * current), float(t))
        history = record_scale(s, decision.history, current, decision.desired, float(t))
        current = decision.desired
        seen.append((t, current))
    assert [t for t, replicas in seen if replicas == 6][-1] == 285
    assert dict(seen)[300] == 2


def test_record_scale_keeps_only_what_a_period_can_see() -> None:
    s = spec()
    history = History(
        scale_up_events=(ScaleEvent(NOW - 20, 2), ScaleEvent(NOW - 5, 1)),
        scale_down_events=(ScaleEvent(NOW - 16, 1),),
    )
    after = record_scale(s, history, 4, 6, NOW)
    # Longest period of any default policy: 15 s. Events at -20 and -16 go; +2 is added.
    assert after.scale_up_events == (ScaleEvent(NOW - 5, 1), ScaleEvent(NOW, 2))
    assert after.scale_down_events == ()
    after = record_scale(s, after, 6, 3, NOW + 1)
    assert after.scale_down_events == (ScaleEvent(NOW + 1, 3),)
