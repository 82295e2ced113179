"""The policy `rolling-update-loses-nothing`: the bundle's server Deployment replaces
pods surge-first, drains each old one in its preStop hook, is ready on /readyz and has a
PDB of one pod at a time (so a rollout, like `iofleet restart`, loses no client); each
way of breaking that is reported, one line naming the Deployment."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, Recorded, after_deploy, run_stack
from test_infra_policy import broken, find, server_container, violations

from infra.policy.rules import PDB, check_rolling_update

POLICY = "rolling-update-loses-nothing"


def _deployment(resources: list[Recorded]) -> dict[str, Any]:
    return find(resources, "Deployment", "iofleet-server")


def _rolling(resources: list[Recorded]) -> dict[str, Any]:
    rolling: dict[str, Any] = _deployment(resources)["spec"]["strategy"]["rollingUpdate"]
    return rolling


def _drop_pdb(resources: list[Recorded]) -> None:
    resources[:] = [r for r in resources if r.type != PDB]


BREAKS: list[tuple[str, Callable[[list[Recorded]], None]]] = [
    ("maxUnavailable must be 0", lambda rs: _rolling(rs).update(maxUnavailable=1)),
    ("maxUnavailable must be 0", lambda rs: _rolling(rs).update(maxUnavailable="25%")),
    ("maxSurge must be >= 1", lambda rs: _rolling(rs).update(maxSurge=0)),
    ("maxSurge must be >= 1", lambda rs: _rolling(rs).update(maxSurge="0%")),
    # No strategy at all: Kubernetes' default lets 25% of the pods go first.
    ("maxUnavailable must be 0", lambda rs: _deployment(rs)["spec"].pop("strategy")),
    ("strategy Recreate", lambda rs: _deployment(rs)["spec"].update(strategy={"type": "Recreate"})),
    ("preStop hook must drain", lambda rs: server_container(rs).pop("lifecycle")),
    ("readinessProbe must be /readyz", lambda rs: server_container(rs).pop("readinessProbe")),
    ("no PodDisruptionBudget", _drop_pdb),
    (
        "no PodDisruptionBudget",
        lambda rs: find(rs, "PodDisruptionBudget", "iofleet-server")["spec"].update(
            maxUnavailable="50%"
        ),
    ),
]


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_the_bundle_rolls_surge_first_with_a_drain(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        assert violations(POLICY, fleet.resources) == []
        rolling = _rolling(fleet.resources)
        assert rolling["maxUnavailable"] == 0

    return after_deploy(check)


@pytest.mark.parametrize(
    ("what", "change"), BREAKS, ids=[f"{i}-{w}" for i, (w, _) in enumerate(BREAKS)]
)
@pulumi.runtime.test
def test_each_break_is_reported(what: str, change: Callable[[list[Recorded]], None]) -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        found = violations(POLICY, broken(fleet, change))
        assert len(found) == 1 and what in found[0] and "iofleet-server" in found[0], found

    return after_deploy(check)


def test_the_check_ignores_deployments_that_are_not_servers() -> None:
    other = {"metadata": {"name": "web"}, "spec": {"strategy": {"type": "Recreate"}}}
    assert check_rolling_update([("kubernetes:apps/v1:Deployment", other)]) == []
