"""The policy pack: each policy passes the bundle's own resources (recorded from the
program under mocks) and fails a deliberately broken copy."""

from __future__ import annotations

import ast
import copy
import sys
from collections.abc import Callable
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_fleet import (
    REGIONAL_STACKS,
    ROOT,
    FleetMocks,
    Recorded,
    after_deploy,
    deployed,
    run_stack,
)
from pulumi_policy import (
    PolicyCustomTimeouts,
    PolicyResource,
    PolicyResourceOptions,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
)

from infra.policy.rules import POLICIES

BY_NAME = {p.name: p for p in POLICIES}
VARIANTS = [(stack, {}) for stack in REGIONAL_STACKS] + [
    ("dev", {"iofleet:balancer": "nginx"}),
    ("dev", {"iofleet:balancer": "alb"}),
    ("dev", {"iofleet:autoscaling": "direct"}),
]


def _options() -> PolicyResourceOptions:
    return PolicyResourceOptions(
        protect=False,
        ignore_changes=[],
        delete_before_replace=None,
        aliases=[],
        custom_timeouts=PolicyCustomTimeouts(0, 0, 0),
        additional_secret_outputs=[],
    )


def violations(policy_name: str, resources: list[Recorded]) -> list[str]:
    """Run one policy the way the analyzer would, collecting what it reports."""
    policy = BY_NAME[policy_name]
    found: list[str] = []

    def report(message: str, urn: str | None = None) -> None:
        found.append(message)

    if isinstance(policy, ResourceValidationPolicy):
        for r in resources:
            args = ResourceValidationArgs(
                r.type, r.inputs, f"urn:{r.name}", r.name, _options(), None
            )
            policy.validate(args, report)
    else:
        stack = [
            PolicyResource(
                r.type, r.inputs, f"urn:{r.name}", r.name, _options(), None, None, [], {}
            )
            for r in resources
        ]
        policy.validate(StackValidationArgs(stack), report)
    return found


def broken(fleet: FleetMocks, change: Callable[[list[Recorded]], None]) -> list[Recorded]:
    copied = copy.deepcopy(fleet.resources)
    change(copied)
    return copied


def find(resources: list[Recorded], kind: str, name: str) -> dict[str, Any]:
    return next(
        r.inputs
        for r in resources
        if r.is_kubernetes and r.inputs["kind"] == kind and r.inputs["metadata"]["name"] == name
    )


def server_container(resources: list[Recorded]) -> dict[str, Any]:
    return find(resources, "Deployment", "iofleet-server")["spec"]["template"]["spec"][
        "containers"
    ][0]


@pulumi.runtime.test
def test_the_pack_has_every_invariant() -> None:
    assert set(BY_NAME) == {
        "redis-tls-auth-multi-az",
        "balancer-idle-timeout",
        "termination-grace-covers-drain",
        "connection-count-autoscaling",
        "connection-hpa-needs-autoscaler",
        "admin-port-not-public",
        "non-root-containers",
        "rolling-update-loses-nothing",
        "rollout-surge-fits-nodes",
        "karpenter-keeps-pod-deletion-cost",
        "karpenter-off-its-own-nodes",
        "headroom-below-servers",
        "recovery-needs-supported-redis",
        "relay-far-redis-over-tls",
    }


@pytest.mark.parametrize(("stack", "overrides"), VARIANTS)
@pulumi.runtime.test
def test_bundle_resources_pass_every_policy(stack: str, overrides: dict[str, Any]) -> Any:
    fleet = run_stack(stack, overrides)

    def check() -> None:
        for name in BY_NAME:
            assert violations(name, fleet.resources) == [], name

    return after_deploy(check)


def _redis(resources: list[Recorded]) -> dict[str, Any]:
    return next(
        r.inputs for r in resources if r.type.startswith("aws:elasticache/replicationGroup")
    )


REDIS_BREAKS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("TLS in transit", lambda g: g.update(transitEncryptionEnabled=False)),
    ("auth token", lambda g: g.pop("authToken")),
    ("Multi-AZ", lambda g: g.update(multiAzEnabled=False)),
    ("automatic failover", lambda g: g.update(automaticFailoverEnabled=False)),
    ("encryption at rest", lambda g: g.update(atRestEncryptionEnabled=False)),
    ("numCacheClusters", lambda g: g.update(numCacheClusters=1)),
    ("turns AUTH off", lambda g: g.update(authTokenUpdateStrategy="DELETE")),
]


@pytest.mark.parametrize(("what", "change"), REDIS_BREAKS, ids=[w for w, _ in REDIS_BREAKS])
@pulumi.runtime.test
def test_redis_policy_fails_a_broken_group(
    what: str, change: Callable[[dict[str, Any]], None]
) -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        found = violations("redis-tls-auth-multi-az", broken(fleet, lambda rs: change(_redis(rs))))
        assert len(found) == 1 and what in found[0], found

    return after_deploy(check)


@pulumi.runtime.test
def test_termination_grace_policy_fails_a_short_grace() -> Any:
    fleet = run_stack("dev")

    def change(resources: list[Recorded]) -> None:
        pod = find(resources, "Deployment", "iofleet-server")["spec"]["template"]["spec"]
        pod["terminationGracePeriodSeconds"] = 25.0  # dev drains for 5 + 20 s

    def check() -> None:
        found = violations("termination-grace-covers-drain", broken(fleet, change))
        assert len(found) == 1 and "(25)" in found[0], found

    return after_deploy(check)


NON_ROOT_BREAKS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("runAsNonRoot", lambda c: c["securityContext"].update(runAsNonRoot=False)),
    ("runAsUser must not be 0", lambda c: c["securityContext"].update(runAsUser=0.0)),
    ("allowPrivilegeEscalation", lambda c: c["securityContext"].pop("allowPrivilegeEscalation")),
]


@pytest.mark.parametrize(("what", "change"), NON_ROOT_BREAKS, ids=[w for w, _ in NON_ROOT_BREAKS])
@pulumi.runtime.test
def test_non_root_policy_fails_a_root_container(
    what: str, change: Callable[[dict[str, Any]], None]
) -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        found = violations(
            "non-root-containers", broken(fleet, lambda rs: change(server_container(rs)))
        )
        assert found and all(what in f for f in found), found

    return after_deploy(check)


@pytest.mark.parametrize(
    ("stack", "overrides", "kind"),
    [
        ("prod-us-east-1", {}, "alb"),
        ("dev", {"iofleet:balancer": "nginx"}, "nginx"),
        ("dev", {}, "haproxy"),
    ],
)
@pulumi.runtime.test
def test_idle_timeout_policy_fails_a_short_timeout(
    stack: str, overrides: dict[str, Any], kind: str
) -> Any:
    fleet = run_stack(stack, overrides)

    def change(resources: list[Recorded]) -> None:
        if kind == "haproxy":
            data = find(resources, "ConfigMap", "iofleet-haproxy")["data"]
            data["haproxy.cfg"] = data["haproxy.cfg"].replace(
                "timeout tunnel 60s", "timeout tunnel 30s"
            )
            return
        notes = find(resources, "Ingress", "iofleet")["metadata"]["annotations"]
        for key, value in list(notes.items()):
            notes[key] = value.replace(
                "idle_timeout.timeout_seconds=120", "idle_timeout.timeout_seconds=40"
            )
        notes["nginx.ingress.kubernetes.io/proxy-read-timeout"] = "40"

    def check() -> None:
        found = violations("balancer-idle-timeout", broken(fleet, change))
        assert len(found) == 1 and "45" in found[0], found

    return after_deploy(check)


@pulumi.runtime.test
def test_idle_timeout_policy_follows_the_servers_ping_settings() -> Any:
    fleet = run_stack("prod-us-east-1")

    def change(resources: list[Recorded]) -> None:
        for env in server_container(resources)["env"]:
            if env["name"] == "IOFLEET_PING_INTERVAL":
                env["value"] = "110"  # 110 + 20 > the ALB's 120 s

    def check() -> None:
        found = violations("balancer-idle-timeout", broken(fleet, change))
        assert len(found) == 1 and "130" in found[0], found

    return after_deploy(check)


@pulumi.runtime.test
def test_autoscaling_policy_needs_an_hpa_or_the_autoscaler() -> Any:
    fleet = run_stack("dev")

    def drop_hpa(resources: list[Recorded]) -> None:
        resources[:] = [r for r in resources if r.inputs.get("kind") != "HorizontalPodAutoscaler"]

    def drop_both(resources: list[Recorded]) -> None:
        drop_hpa(resources)
        resources[:] = [
            r for r in resources if r.inputs.get("metadata", {}).get("name") != "iofleet-autoscaler"
        ]

    def cpu_hpa(resources: list[Recorded]) -> None:
        drop_both(resources)
        fleet_hpa = next(
            r for r in fleet.resources if r.inputs.get("kind") == "HorizontalPodAutoscaler"
        )
        hpa = copy.deepcopy(fleet_hpa)
        hpa.inputs["spec"]["metrics"] = [{"type": "Resource", "resource": {"name": "cpu"}}]
        resources.append(hpa)

    def check() -> None:
        name = "connection-count-autoscaling"
        assert violations(name, broken(fleet, drop_hpa)) == []  # the autoscaler alone suffices
        assert len(violations(name, broken(fleet, drop_both))) == 1
        assert len(violations(name, broken(fleet, cpu_hpa))) == 1

    return after_deploy(check)


@pulumi.runtime.test
def test_admin_port_policy_fails_public_exposure() -> Any:
    async def run() -> None:
        fleet = await deployed("dev")
        alb = await deployed("dev", {"iofleet:balancer": "alb"})

        def public_admin_service(resources: list[Recorded]) -> None:
            find(resources, "Service", "iofleet-server-admin")["spec"]["type"] = "LoadBalancer"

        def lb_to_admin(resources: list[Recorded]) -> None:
            find(resources, "Service", "iofleet-haproxy")["spec"]["ports"][0]["targetPort"] = 9000.0

        def ingress_to_admin(resources: list[Recorded]) -> None:
            spec = find(resources, "Ingress", "iofleet")["spec"]
            spec["defaultBackend"]["service"] = {
                "name": "iofleet-server-admin",
                "port": {"name": "admin"},
            }

        def check() -> None:
            name = "admin-port-not-public"
            assert len(violations(name, broken(fleet, public_admin_service))) == 1
            assert len(violations(name, broken(fleet, lb_to_admin))) == 1
            assert len(violations(name, broken(alb, ingress_to_admin))) == 1

        check()

    return run()


@pulumi.runtime.test
def test_only_the_pack_entry_point_constructs_the_policy_pack() -> None:
    """PolicyPack(...) starts the analyzer and blocks: it lives in __main__.py alone,
    built from the same POLICIES these tests exercise."""
    entry = ROOT / "infra" / "policy" / "__main__.py"
    tree = ast.parse(entry.read_text())
    calls = [
        node
        for node in ast.walk(tree)
        if isinstance(node, ast.Call) and getattr(node.func, "id", "") == "PolicyPack"
    ]
    assert len(calls) == 1
    keywords = {k.arg: k.value for k in calls[0].keywords}
    assert isinstance(keywords["policies"], ast.Name) and keywords["policies"].id == "POLICIES"
    others = [p for p in (ROOT / "infra").rglob("*.py") if p != entry]
    assert not [p for p in others if "PolicyPack(" in p.read_text()]
    manifest = yaml.safe_load((ROOT / "infra" / "policy" / "PulumiPolicy.yaml").read_text())
    assert manifest["runtime"]["name"] == "python"


@pulumi.runtime.test
def test_a_connection_hpa_needs_the_autoscaler_and_its_api_services() -> Any:
    async def run() -> None:
        fleet = await deployed("dev")
        fixed = await deployed("dev", {"iofleet:autoscaling": "none"})

        def drop_autoscaler(resources: list[Recorded]) -> None:
            resources[:] = [
                r
                for r in resources
                if not (r.inputs.get("kind") == "Deployment" and "autoscaler" in r.name)
            ]

        def drop_v1beta2(resources: list[Recorded]) -> None:
            resources[:] = [r for r in resources if not r.name.endswith("-v1beta2")]

        def check() -> None:
            name = "connection-hpa-needs-autoscaler"
            assert violations(name, fleet.resources) == []
            (found,) = violations(name, broken(fleet, drop_autoscaler))
            assert "HPA iofleet-server" in found and "autoscaler Deployment" in found
            (found,) = violations(name, broken(fleet, drop_v1beta2))
            assert "v1beta2.custom.metrics.k8s.io" in found
            # No HPA, no autoscaler: nothing is blind; the advisory policy says it is unscaled.
            assert violations(name, fixed.resources) == []
            assert len(violations("connection-count-autoscaling", fixed.resources)) == 1
            assert BY_NAME["connection-count-autoscaling"].enforcement_level.value == "advisory"

        check()

    return run()


@pulumi.runtime.test
def test_the_pack_imports_only_what_its_own_virtualenv_has() -> None:
    """The pack's venv holds pulumi and pulumi-policy only (requirements.txt); the server
    defaults come from server.contract and the Redis rule from infra.redis_rules, which
    must stay stdlib-only for that to work."""
    allowed_roots = {"pulumi_policy", "server", "infra", "__future__", *sys.stdlib_module_names}
    shared = {"server.contract", "infra.redis_rules"}
    paths = [ROOT / "infra" / "policy" / "rules.py", ROOT / "server" / "contract.py"]
    for path in [*paths, ROOT / "infra" / "redis_rules.py"]:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module in ("server", "infra"):
                names = [f"{node.module}.{a.name}" for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module:
                names = [node.module]
            for module in names:
                assert module.split(".")[0] in allowed_roots, f"{path.name} imports {module}"
                if module.startswith(("server", "infra")):
                    assert module in shared, f"{path.name} imports {module}"
    from infra.policy import rules
    from server import contract

    assert rules.SERVER_DEFAULTS["IOFLEET_PING_TIMEOUT"] == contract.PING_TIMEOUT_SECONDS
    assert rules.SERVER_DEFAULTS["IOFLEET_DRAIN_SECONDS"] == contract.DRAIN_SECONDS


def _node_group(resources: list[Recorded]) -> dict[str, Any]:
    return next(r.inputs for r in resources if r.type == "aws:eks/nodeGroup:NodeGroup")


@pulumi.runtime.test
def test_surge_policy_fails_when_the_surge_pod_has_no_node() -> Any:
    """3 x m7i.large (1.93 CPU allocatable, 1.8 after the DaemonSets) hold one 1-CPU
    server each: the rollout's surge pod (25% of 3, rounded up) stays Pending (issue 24)."""
    fleet = run_stack("prod-us-east-1")

    def three_nodes(resources: list[Recorded]) -> None:
        _node_group(resources)["scalingConfig"]["minSize"] = 3.0

    def unknown_type(resources: list[Recorded]) -> None:
        _node_group(resources)["instanceTypes"] = ["x9.huge"]

    def check() -> None:
        name = "rollout-surge-fits-nodes"
        assert violations(name, fleet.resources) == []
        (found,) = violations(name, broken(fleet, three_nodes))
        assert "3 node(s)" in found and "iofleet-server (4 pods with surge)" in found, found
        (found,) = violations(name, broken(fleet, unknown_type))
        assert "x9.huge" in found and "INSTANCE_TYPES" in found

    return after_deploy(check)


@pulumi.runtime.test
def test_surge_policy_counts_every_pod_of_the_stack() -> Any:
    """dev: 2 x t3.large hold HAProxy (2 x 500m), the autoscaler, CoreDNS and 2 + 1
    servers of 250m; four 1-CPU servers with their surge do not fit beside them."""
    fleet = run_stack("dev")

    def big_servers(resources: list[Recorded]) -> None:
        deployment = find(resources, "Deployment", "iofleet-server")
        deployment["spec"]["replicas"] = 4.0
        server_container(resources)["resources"]["requests"]["cpu"] = "1"

    def check() -> None:
        name = "rollout-surge-fits-nodes"
        assert violations(name, fleet.resources) == []
        (found,) = violations(name, broken(fleet, big_servers))
        assert "2 node(s)" in found and "(5 pods with surge)" in found, found

    return after_deploy(check)
