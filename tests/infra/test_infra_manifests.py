"""Every Kubernetes object the program produces validates with kubernetes-validate
--strict against the program's default cluster version, for every stack file, every
balancer kind and every autoscaling mode."""

from __future__ import annotations

from typing import Any

import kubernetes_validate
import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, FleetMocks, after_deploy, run_stack

from infra.config import DEFAULT_CLUSTER_VERSION

K8S_VERSION = DEFAULT_CLUSTER_VERSION
# Custom resources of the Prometheus operator, cert-manager and Karpenter: kubernetes-validate ships
# schemas for built-in kinds only, so these are checked structurally in test_infra_stacks
# test_infra_autoscaler_tls and test_infra_node_autoscaling (against the CRD fields).
CRD_KINDS = {
    "PrometheusRule",
    "ServiceMonitor",
    "Certificate",
    "Issuer",
    "NodePool",
    "EC2NodeClass",
}


def validate_all(fleet: FleetMocks) -> list[str]:
    checked: list[str] = []
    for record in fleet.resources:
        if not record.is_kubernetes or record.inputs["kind"] in CRD_KINDS:
            continue
        manifest: dict[str, Any] = record.manifest()
        kubernetes_validate.validate(manifest, K8S_VERSION, strict=True)
        checked.append(f"{manifest['kind']}/{manifest['metadata']['name']}")
    return checked


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_every_object_validates_strict(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        checked = validate_all(fleet)
        # The core objects are among those validated, so a skipped kind cannot hide.
        for expected in (
            "Deployment/iofleet-server",
            "HorizontalPodAutoscaler/iofleet-server",
            "APIService/v1beta2.custom.metrics.k8s.io",
            "NetworkPolicy/iofleet-server",
            "PodDisruptionBudget/iofleet-server",
            "Deployment/iofleet-autoscaler",
        ):
            assert expected in checked

    return after_deploy(check)


@pytest.mark.parametrize("balancer", ["alb", "nginx", "haproxy"])
@pulumi.runtime.test
def test_every_balancer_kind_validates_strict(balancer: str) -> Any:
    fleet = run_stack("dev", {"iofleet:balancer": balancer, "iofleet:prometheus_operator": True})

    def check() -> None:
        checked = validate_all(fleet)
        assert ("Ingress/iofleet" in checked) == (balancer != "haproxy")
        assert ("Deployment/iofleet-haproxy" in checked) == (balancer == "haproxy")

    return after_deploy(check)


@pytest.mark.parametrize("mode", ["direct", "none"])
@pulumi.runtime.test
def test_every_autoscaling_mode_validates_strict(mode: str) -> Any:
    fleet = run_stack("dev", {"iofleet:autoscaling": mode})

    def check() -> None:
        checked = validate_all(fleet)
        assert "HorizontalPodAutoscaler/iofleet-server" not in checked
        assert ("Deployment/iofleet-autoscaler" in checked) == (mode == "direct")

    return after_deploy(check)


@pulumi.runtime.test
def test_validator_rejects_an_unknown_field() -> None:
    """The strict schema really is strict (guards against a validator that passes all)."""
    broken = {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {"name": "x"},
        "spec": {"ports": [{"port": 80}], "notAField": True},
    }
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, K8S_VERSION, strict=True)
