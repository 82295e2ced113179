"""The balancers' parts (issue 24): a patched ingress-nginx with its admission webhook
off, a current AWS Load Balancer Controller with a PDB, and HAProxy's shutdown inside
its grace period."""

from __future__ import annotations

import re
from typing import Any

import pulumi
import pytest
from packaging.version import Version
from pulumi_fleet import OPERATOR_VALUES, FleetMocks, after_deploy, run_stack, stack_config

from infra.config import DEFAULT_CLUSTER_VERSION, validate


def _release(fleet: FleetMocks, chart: str) -> dict[str, Any]:
    (release,) = [
        r for r in fleet.of_type("kubernetes:helm.sh/v3:Release") if r.inputs["chart"] == chart
    ]
    return release.inputs


def _patched_for_cve_2025_1974(chart: Version) -> bool:
    """Chart 4.11.5 (controller v1.11.5) on the 4.11 line, 4.12.1 (v1.12.1) and later."""
    return chart >= Version("4.12.1") or Version("4.11.5") <= chart < Version("4.12.0")


@pulumi.runtime.test
def test_ingress_nginx_is_patched_tested_here_and_its_webhook_is_off() -> Any:
    from infra import balancer

    fleet = run_stack("dev", {"iofleet:balancer": "nginx"})

    def check() -> None:
        release = _release(fleet, "ingress-nginx")
        assert _patched_for_cve_2025_1974(Version(release["version"])), release["version"]
        assert DEFAULT_CLUSTER_VERSION in getattr(balancer, "INGRESS_NGINX_KUBERNETES", ())
        controller = release["values"]["controller"]
        assert controller["admissionWebhooks"] == {"enabled": False}
        assert controller["allowSnippetAnnotations"] is False
        # dev has no certificate: no 443 listener at all, not 443 as plain TCP.
        assert controller["service"]["enableHttps"] is False

    return after_deploy(check)


@pulumi.runtime.test
def test_ingress_nginx_serves_443_only_with_a_certificate() -> Any:
    cert = OPERATOR_VALUES["prod-us-east-1"]["iofleet:certificate_arn"].replace(
        "us-east-1", "us-west-2"
    )
    fleet = run_stack("dev", {"iofleet:balancer": "nginx", "iofleet:certificate_arn": cert})

    def check() -> None:
        service = _release(fleet, "ingress-nginx")["values"]["controller"]["service"]
        assert service["enableHttps"] is True
        assert (
            service["annotations"]["service.beta.kubernetes.io/aws-load-balancer-ssl-ports"]
            == "443"
        )

    return after_deploy(check)


def test_choosing_the_retired_ingress_nginx_is_a_warning() -> None:
    values = {
        k.removeprefix("iofleet:"): v
        for k, v in stack_config("dev").items()
        if k.startswith("iofleet:")
    }
    _, problems, warnings = validate(
        {**values, "balancer": "nginx"}, stack="dev", region="us-west-2"
    )
    assert problems == []
    assert any("iofleet:balancer" in w and "retired" in w and "haproxy" in w for w in warnings)
    _, _, warnings = validate(values, stack="dev", region="us-west-2")
    assert not any("retired" in w for w in warnings)


@pulumi.runtime.test
def test_lb_controller_is_current_and_keeps_a_replica_through_disruptions() -> Any:
    """1.9.2 (v2.9.2) was two years old; its Service webhook fails closed, so with both
    replicas evicted no LoadBalancer Service can be created: a PDB keeps one."""
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        release = _release(fleet, "aws-load-balancer-controller")
        assert Version(release["version"]) >= Version("3.5.0")
        values = release["values"]
        assert values["replicaCount"] == 2
        assert values["podDisruptionBudget"] == {"maxUnavailable": 1}

    return after_deploy(check)


@pytest.mark.parametrize("stack", ["dev", "prod-us-east-1"])
@pulumi.runtime.test
def test_haproxy_stops_within_its_grace_period_with_a_margin(stack: str) -> Any:
    """preStop (15 s) + hard-stop-after (75 s) used to equal the 90 s grace, so the
    kubelet's SIGKILL raced HAProxy's own hard stop."""
    fleet = run_stack(stack, {"iofleet:balancer": "haproxy"})

    def check() -> None:
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-haproxy")
        pod = deployment.manifest()["spec"]["template"]["spec"]
        prestop = pod["containers"][0]["lifecycle"]["preStop"]["sleep"]["seconds"]
        (config,) = fleet.kubernetes("ConfigMap", "iofleet-haproxy")
        found = re.search(r"hard-stop-after (\d+)s", config.inputs["data"]["haproxy.cfg"])
        assert found is not None
        assert pod["terminationGracePeriodSeconds"] >= prestop + int(found.group(1)) + 10

    return after_deploy(check)
