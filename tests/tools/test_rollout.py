"""`iofleet rollout` orchestration against the Pulumi stand-in, with a fake clock;
the health gate's HTTP side against real server processes."""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.rollout import (
    Gate,
    HttpHealth,
    PodHealth,
    RegionHealth,
    Rollout,
    RolloutConfig,
    StackTarget,
    StandInStacks,
    gate_failures,
)
from tests.support.procs import TEST_ADMIN_TOKEN, ServerProcess

CONFIG = {
    "waves": [
        {"name": "canary", "stacks": ["prod-eu-west-1"]},
        {"name": "main", "stacks": ["prod-us-east-1", "prod-us-west-2"]},
        {"name": "last", "stacks": ["prod-ap-southeast-1"]},
    ],
    "gate": {"recover_share": 0.9, "deadline_seconds": 60, "poll_seconds": 5},
}


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += seconds
        await asyncio.sleep(0)


class ScriptedHealth:
    """Each stack has 1000 connections; after its `up`, `recovery(stack, polls)` says
    what share has come back on each poll."""

    def __init__(self, clock: FakeClock, recovery: Callable[[str, int], float]) -> None:
        self.clock = clock
        self.recovery = recovery
        self.updated: set[str] = set()
        self.polls: dict[str, int] = {}

    async def sample(
        self, stack: str, target: StackTarget, outputs: Mapping[str, Any]
    ) -> RegionHealth:
        share = 1.0
        if stack in self.updated:
            self.polls[stack] = self.polls.get(stack, 0) + 1
            share = self.recovery(stack, self.polls[stack])
        pods = tuple(PodHealth(f"{stack}/pod{i}", True, 500 * share) for i in range(2))
        return RegionHealth(public_ok=True, pods=pods, at=self.clock())


def make(
    recovery: Callable[[str, int], float], **stand_in: Any
) -> tuple[Rollout, StandInStacks, ScriptedHealth, FakeClock]:
    clock = FakeClock()
    health = ScriptedHealth(clock, recovery)
    stacks = StandInStacks(**stand_in)
    stacks.on_up = health.updated.add
    rollout = Rollout(
        RolloutConfig.model_validate(CONFIG), stacks, health, sleep=clock.sleep, clock=clock
    )
    return rollout, stacks, health, clock


def updated_stacks(stacks: StandInStacks) -> list[str]:
    return [stack for op, stack in stacks.calls if op == "up"]


def test_waves_go_in_order_canary_first_and_all_pass() -> None:
    rollout, stacks, _, _ = make(lambda stack, polls: 1.0)
    report = asyncio.run(rollout.run())
    assert report.ok and report.stopped_at is None
    assert [r.status for r in report.stacks] == ["passed"] * 4
    ups = updated_stacks(stacks)
    assert ups[0] == "prod-eu-west-1"
    assert set(ups[1:3]) == {"prod-us-east-1", "prod-us-west-2"}
    assert ups[3] == "prod-ap-southeast-1"
    # Every stack is previewed before it is updated.
    for stack in ups:
        assert stacks.calls.index(("preview", stack)) < stacks.calls.index(("up", stack))


def test_the_gate_waits_for_connections_to_recover() -> None:
    # The canary's connections come back 40 %, 70 %, 95 %: the gate passes on the third
    # poll (5 s apart), not before.
    rollout, _, health, _ = make(lambda stack, polls: {1: 0.4, 2: 0.7}.get(polls, 0.95))
    report = asyncio.run(rollout.run())
    assert report.ok
    assert health.polls["prod-eu-west-1"] == 3
    canary = report.stacks[0]
    assert canary.seconds == 10.0  # two 5 s waits on the fake clock


def test_a_failed_gate_stops_the_rollout_and_says_what_next() -> None:
    # us-west-2 never gets back above half its connections.
    rollout, stacks, _, clock = make(lambda stack, polls: 0.5 if stack == "prod-us-west-2" else 1)
    report = asyncio.run(rollout.run())
    assert not report.ok and report.stopped_at == "main"
    by_stack = {r.stack: r for r in report.stacks}
    assert by_stack["prod-us-west-2"].status == "failed"
    assert any(
        "connections 500 < 90% of 1000" in r for r in by_stack["prod-us-west-2"].gate_reasons
    )
    assert by_stack["prod-us-east-1"].status == "passed"  # the same wave went on
    assert by_stack["prod-ap-southeast-1"].status == "waiting"
    assert "prod-ap-southeast-1" not in updated_stacks(stacks)  # the next wave never started
    assert clock.now >= 60  # it waited out the deadline
    assert any("--from-wave main" in step for step in report.next_steps)


def test_a_failed_update_stops_before_any_later_stack() -> None:
    rollout, stacks, _, _ = make(lambda stack, polls: 1.0, fail_up={"prod-eu-west-1"})
    report = asyncio.run(rollout.run())
    assert not report.ok and report.stopped_at == "canary"
    assert report.stacks[0].status == "failed" and "up failed" in report.stacks[0].detail
    assert updated_stacks(stacks) == ["prod-eu-west-1"]
    assert [op for op, _ in stacks.calls] == ["preview", "up"]


def test_a_failed_preview_never_updates() -> None:
    rollout, stacks, _, _ = make(lambda stack, polls: 1.0, fail_preview={"prod-eu-west-1"})
    report = asyncio.run(rollout.run())
    assert report.stacks[0].status == "failed" and "preview failed" in report.stacks[0].detail
    assert updated_stacks(stacks) == []


def test_from_wave_skips_earlier_waves() -> None:
    rollout, stacks, _, _ = make(lambda stack, polls: 1.0)
    report = asyncio.run(rollout.run(from_wave="last"))
    assert updated_stacks(stacks) == ["prod-ap-southeast-1"]
    assert [r.status for r in report.stacks] == ["skipped", "skipped", "skipped", "passed"]


def pods(*specs: tuple[bool, float, float, float]) -> tuple[PodHealth, ...]:
    return tuple(PodHealth(f"p{i}", *spec) for i, spec in enumerate(specs))


@pytest.mark.parametrize(
    ("now_pods", "public_ok", "expected"),
    [
        (pods((True, 500, 0.001, 0), (True, 500, 0.002, 0)), True, []),
        (pods((True, 500, 0.001, 0), (False, 500, 0, 0)), True, ["1 pod(s) not ready"]),
        (pods((True, 400, 0.001, 0), (True, 400, 0, 0)), True, ["connections 800 < 90%"]),
        (pods((True, 500, 0.080, 0), (True, 500, 0, 0)), True, ["event-loop lag 80.0 ms"]),
        (pods((True, 500, 0, 30), (True, 500, 0, 0)), True, ["errors 3.00/s > 1.0/s"]),
        (pods((True, 500, 0, 0), (True, 500, 0, 0)), False, ["public endpoint"]),
        ((), True, ["no pods", "connections 0 <"]),
    ],
)
def test_gate_rules(now_pods: tuple[PodHealth, ...], public_ok: bool, expected: list[str]) -> None:
    gate = Gate(recover_share=0.9, max_loop_lag_ms=50, max_errors_per_second=1.0)
    baseline = RegionHealth(True, pods((True, 500, 0, 0), (True, 500, 0, 0)), at=0)
    before = RegionHealth(True, pods((True, 500, 0, 0), (True, 500, 0, 0)), at=0)
    reasons = gate_failures(gate, baseline, before, RegionHealth(public_ok, now_pods, at=10))
    assert len(reasons) == len(expected), reasons
    for reason, start in zip(reasons, expected, strict=True):
        assert reason.startswith(start), (reason, start)


def test_http_health_reads_real_servers_and_sees_a_draining_pod() -> None:
    env = {"IOFLEET_DRAIN_DELAY": "30", "IOFLEET_DRAIN_SECONDS": "30"}
    servers = [ServerProcess(f"h{i}", env=dict(env)).start() for i in (1, 2)]
    try:
        target = StackTarget(admin_urls=[s.admin_url for s in servers], public_url=servers[0].url)
        health = HttpHealth()
        first = asyncio.run(health.sample("local", target, {}))
        assert first.public_ok and [p.ready for p in first.pods] == [True, True]
        assert gate_failures(Gate(), first, None, first) == []
        request = urllib.request.Request(
            f"{servers[1].admin_url}/admin/drain",
            method="POST",
            headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
        )
        urllib.request.urlopen(request, timeout=5).close()
        second = asyncio.run(health.sample("local", target, {}))
        assert [p.ready for p in second.pods] == [True, False]
        reasons = gate_failures(Gate(), first, first, second)
        assert reasons and reasons[0].startswith("1 pod(s) not ready")
        # Pods found by name at each sample (a headless Service in a cluster).
        by_dns = StackTarget(admin_dns=f"127.0.0.1:{servers[0].admin_port}")
        found = asyncio.run(health.sample("dns", by_dns, {"public_hostname": "127.0.0.1:9"}))
        assert [p.url for p in found.pods] == [servers[0].admin_url] and found.pods[0].ready
        assert not found.public_ok  # the stack outputs' hostname answers nothing
        # A region whose endpoint answers nothing fails the public check.
        gone = StackTarget(admin_urls=[], public_url="http://127.0.0.1:9")
        assert not asyncio.run(health.sample("gone", gone, {})).public_ok
    finally:
        for server in servers:
            server.stop()


def test_plan_prints_the_waves_without_acting(tmp_path: Path) -> None:
    path = tmp_path / "rollout.yaml"
    path.write_text(
        "waves:\n  - {name: canary, stacks: [prod-eu-west-1]}\n"
        "  - {name: rest, stacks: [prod-us-east-1, prod-us-west-2]}\n"
    )
    result = CliRunner().invoke(app, ["rollout", "--config", str(path), "--plan"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "wave 1 (canary): prod-eu-west-1"
    assert lines[1] == "wave 2 (rest): prod-us-east-1, prod-us-west-2"
    path.write_text("waves:\n  - {name: a, stacks: [x]}\n  - {name: b, stacks: [x]}\n")
    bad = CliRunner().invoke(app, ["rollout", "--config", str(path), "--plan"])
    assert bad.exit_code == 2 and "more than one wave" in bad.output
