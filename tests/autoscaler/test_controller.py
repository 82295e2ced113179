"""The control loop over in-memory Source/Actuator implementations of the protocols,
with a fake clock: seeding after a restart, rate limits across syncs, hpa mode."""

from __future__ import annotations

from collections.abc import Sequence

from autoscaler.controller import Controller, spec_from_settings
from autoscaler.model import Node
from autoscaler.policy import Spec
from autoscaler.settings import Settings
from tests.autoscaler.test_kubernetes_backend import FakeClock


class Fleet:
    """Source and Actuator at once: `replicas` nodes each holding `per_node` connections."""

    def __init__(self, replicas: int, per_node: float, owns: bool = True) -> None:
        self.replicas = replicas
        self.per_node = per_node
        self.owns = owns
        self.scaled: list[int] = []

    @property
    def scrape_interval(self) -> float:
        return 5.0

    def nodes(self) -> Sequence[Node]:
        return [
            Node(f"n{i}", None, True, connections=self.per_node, scraped_at=0.0)
            for i in range(self.replicas)
        ]

    @property
    def owns_replicas(self) -> bool:
        return self.owns

    async def current_replicas(self) -> int:
        return self.replicas

    async def scale(self, replicas: int) -> None:
        self.scaled.append(replicas)
        total = self.replicas * self.per_node
        self.replicas = replicas
        self.per_node = total / replicas  # the same users, spread over the new fleet

    async def rank(self, nodes: Sequence[Node]) -> None:
        return None


SPEC = Spec(target=20, min_replicas=2, max_replicas=10)


async def test_a_restart_does_not_skip_the_scale_down_window() -> None:
    clock = FakeClock()
    fleet = Fleet(replicas=6, per_node=2)  # 12 connections: 1 pod would do, min 2
    controller = Controller(SPEC, fleet, fleet, sync_seconds=15, clock=clock)
    for _ in range(19):  # 19 syncs x 15 s = 285 s < 300 s
        await controller.sync()
        clock.now += 15
    assert fleet.scaled == []
    await controller.sync()  # t = +285 s: the seed (6) is 285 s old, still in the window
    clock.now += 15
    await controller.sync()  # t = +300 s: out of the window
    assert fleet.scaled == [2]


async def test_scale_up_follows_the_rate_policy_across_syncs() -> None:
    clock = FakeClock()
    fleet = Fleet(replicas=2, per_node=100)  # 200 connections: 10 pods at target 20
    controller = Controller(SPEC, fleet, fleet, sync_seconds=5, clock=clock)
    for _ in range(4):
        await controller.sync()
        clock.now += 5
    # Default up policy: max(100 %, 4 pods) per 15 s. t=0: 2 -> 6. t=5, 10: the period
    # started at 2 (4 added within it): limit max(4, 6) = 6, hold. t=15: the +4 left the
    # period: limit max(12, 10) -> max 10.
    assert fleet.scaled == [6, 10]
    status = controller.status()
    assert [p["acted"] for p in status["timeline"]] == [True, False, False, True]
    assert "above target" in status["timeline"][0]["reason"]


async def test_hpa_mode_decides_but_never_scales() -> None:
    clock = FakeClock()
    fleet = Fleet(replicas=2, per_node=100, owns=False)
    controller = Controller(SPEC, fleet, fleet, sync_seconds=15, clock=clock)
    decision = await controller.sync()
    assert (decision.current, decision.desired, fleet.scaled) == (2, 6, [])
    assert controller.status()["owns_replicas"] is False


def test_spec_from_settings_reads_the_behavior_settings() -> None:
    spec = spec_from_settings(
        Settings(
            target_connections=50,
            scale_down_pods=1,
            scale_down_select_policy="Min",
            scale_up_stabilization_seconds=30,
        )
    )
    assert spec.target == 50
    assert spec.scale_up.stabilization_window_seconds == 30
    assert spec.scale_down.select_policy == "Min"
    assert [(p.type, p.value) for p in spec.scale_down.policies] == [("Percent", 100), ("Pods", 1)]
