"""The autoscaling mode is an explicit choice (issue 7): `hpa` (the HPA scales on
iofleet_connections served by the autoscaler), `direct` (the autoscaler scales the
Deployment itself) or `none` (a fixed fleet, until an autoscaler image exists)."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import FleetMocks, after_deploy, run_stack


def autoscaler_container(fleet: FleetMocks) -> dict[str, Any]:
    (deployment,) = fleet.kubernetes("Deployment", "iofleet-autoscaler")
    (container,) = deployment.manifest()["spec"]["template"]["spec"]["containers"]
    return container


def env_of(container: dict[str, Any]) -> dict[str, str]:
    return {e["name"]: e["value"] for e in container["env"]}


def role_rules(fleet: FleetMocks) -> dict[str, dict[str, Any]]:
    (role,) = fleet.kubernetes("Role", "iofleet-autoscaler")
    return {rule["resources"][0]: rule for rule in role.inputs["rules"]}


@pytest.mark.parametrize("mode", ["hpa", "direct"])
@pulumi.runtime.test
def test_autoscaler_probes_are_https_on_its_health_paths(mode: str) -> Any:
    fleet = run_stack("dev", {"iofleet:autoscaling": mode})

    def check() -> None:
        container = autoscaler_container(fleet)
        assert container["readinessProbe"]["httpGet"] == {
            "path": "/readyz",
            "port": "https",
            "scheme": "HTTPS",
        }
        # Liveness asks /healthz over HTTPS too, and also restarts an autoscaler whose
        # served certificate is no longer the mounted one (test_infra_autoscaler_tls).
        (script,) = container["livenessProbe"]["exec"]["command"][2:]
        assert "https://127.0.0.1:6443/healthz" in script
        assert env_of(container)["IOFLEET_AUTOSCALER_MODE"] == mode

    return after_deploy(check)


@pulumi.runtime.test
def test_hpa_mode_has_the_hpa_and_metrics_api_and_no_scale_write() -> Any:
    fleet = run_stack("dev", {"iofleet:autoscaling": "hpa"})

    def check() -> None:
        assert fleet.kubernetes("HorizontalPodAutoscaler", "iofleet-server")
        assert {a.inputs["spec"]["version"] for a in fleet.kubernetes("APIService")} == {
            "v1beta1",
            "v1beta2",
        }
        rules = role_rules(fleet)
        assert set(rules) == {"pods"}, "the HPA owns replicas: no deployments/scale write"
        assert set(rules["pods"]["verbs"]) == {"get", "list", "watch", "patch"}

    return after_deploy(check)


@pulumi.runtime.test
def test_direct_mode_scales_through_the_scale_subresource_without_an_hpa() -> Any:
    fleet = run_stack("dev", {"iofleet:autoscaling": "direct"})

    def check() -> None:
        assert not fleet.kubernetes("HorizontalPodAutoscaler")
        assert not fleet.kubernetes("APIService")
        rules = role_rules(fleet)
        scale = rules["deployments/scale"]
        assert scale["resourceNames"] == ["iofleet-server"]
        assert set(scale["verbs"]) == {"get", "patch", "update"}
        # Read-only on HPAs: enough to refuse to start beside one.
        assert set(rules["horizontalpodautoscalers"]["verbs"]) == {"get", "list"}
        assert set(rules["pods"]["verbs"]) == {"get", "list", "watch", "patch"}
        assert fleet.ignore_changes["server-deployment"] == ["spec.replicas"]

    return after_deploy(check)


@pulumi.runtime.test
def test_none_mode_deploys_no_autoscaler_and_no_hpa() -> Any:
    fleet = run_stack("dev", {"iofleet:autoscaling": "none", "iofleet:autoscaler_image": ""})

    def check() -> None:
        assert not fleet.kubernetes("Deployment", "iofleet-autoscaler")
        assert not fleet.kubernetes("HorizontalPodAutoscaler")
        assert not fleet.kubernetes("APIService")
        (server,) = fleet.kubernetes("Deployment", "iofleet-server")
        assert server.inputs["spec"]["replicas"] == 2  # the dev stack's min_replicas

    return after_deploy(check)
