"""The autoscaler Deployment the program renders starts an autoscaler its real settings
accept, and the policy it runs is the HPA's: every `IOFLEET_AUTOSCALER_` variable exists
and validates, and min, max, target and `behavior` match the HPA object, so infra and the
autoscaler cannot drift (nor the two autoscaling modes from each other)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, after_deploy, run_stack
from test_infra_autoscaling import autoscaler_container, env_of

from autoscaler import policy
from autoscaler.controller import spec_from_settings
from autoscaler.settings import AUTOSCALER_ENV_PREFIX, Settings


def spec_of_hpa(hpa: dict[str, Any]) -> policy.Spec:
    """The HPA object as the autoscaler's policy spec (what the HPA controller obeys)."""

    def rules(direction: dict[str, Any]) -> policy.ScalingRules:
        return policy.ScalingRules(
            direction["stabilizationWindowSeconds"],
            direction["selectPolicy"],
            tuple(
                policy.ScalingPolicy(p["type"], p["value"], p["periodSeconds"])
                for p in direction["policies"]
            ),
        )

    spec = hpa["spec"]
    (metric,) = spec["metrics"]
    return policy.Spec(
        target=float(metric["pods"]["target"]["averageValue"]),
        min_replicas=spec["minReplicas"],
        max_replicas=spec["maxReplicas"],
        scale_up=rules(spec["behavior"]["scaleUp"]),
        scale_down=rules(spec["behavior"]["scaleDown"]),
    )


def settings_from(env: dict[str, str], monkeypatch: Any) -> Settings:
    known = {f"{AUTOSCALER_ENV_PREFIX}{name.upper()}" for name in Settings.model_fields}
    assert set(env) <= known, f"unknown to the autoscaler: {sorted(set(env) - known)}"
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    return Settings()


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_autoscaler_env_is_accepted_and_runs_the_hpas_policy(stack: str, monkeypatch: Any) -> Any:
    fleet = run_stack(stack, {"iofleet:autoscaling": "hpa"})

    def check() -> None:
        settings = settings_from(env_of(autoscaler_container(fleet)), monkeypatch)
        assert settings.mode == "hpa"
        (hpa,) = fleet.kubernetes("HorizontalPodAutoscaler", "iofleet-server")
        assert spec_from_settings(settings) == spec_of_hpa(hpa.manifest())

    return after_deploy(check)


@pulumi.runtime.test
def test_direct_mode_runs_the_behaviour_the_stack_configures(monkeypatch: Any) -> Any:
    overrides = {
        "iofleet:autoscaling": "direct",
        "iofleet:scale_up_stabilization_seconds": 30,
        "iofleet:scale_up_percent": 50,
        "iofleet:scale_down_stabilization_seconds": 600,
        "iofleet:scale_down_percent": 5,
    }
    fleet = run_stack("dev", overrides)

    def check() -> None:
        assert not fleet.kubernetes("HorizontalPodAutoscaler")
        settings = settings_from(env_of(autoscaler_container(fleet)), monkeypatch)
        assert settings.mode == "direct"
        spec = spec_from_settings(settings)
        # What the HPA would have had for these keys (infra/workloads.py hpa_behavior).
        assert spec.scale_up == policy.ScalingRules(
            30,
            "Max",
            (policy.ScalingPolicy("Percent", 50, 60), policy.ScalingPolicy("Pods", 2, 60)),
        )
        assert spec.scale_down == policy.ScalingRules(
            600, "Min", (policy.ScalingPolicy("Percent", 5, 60),)
        )

    return after_deploy(check)
