"""A first `pulumi up` that succeeds, for every balancer and every stack (issue 8): each
test here stands for one way the program used to fail or misbehave on a real first run,
checked under mocks that behave like the AWS and Kubernetes APIs where it matters."""

from __future__ import annotations

import datetime
import inspect
import json
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pytest
import yaml
from packaging.requirements import Requirement
from packaging.version import Version
from pulumi_fleet import (
    HTTP_REGION,
    OPERATOR_VALUES,
    REGIONAL_STACKS,
    ROOT,
    STACKS,
    FleetMocks,
    Recorded,
    after_deploy,
    deployed,
    run_stack,
)

from infra.config import DEFAULT_CLUSTER_VERSION, EKS_VERSIONS, ConfigError, support_warning

# --- the balancer lookup ---------------------------------------------------------------


@pytest.mark.parametrize(
    "overrides",
    [
        {"iofleet:balancer": "nginx"},
        {
            "iofleet:balancer": "haproxy",
            "iofleet:certificate_arn": OPERATOR_VALUES["prod-us-east-1"][
                "iofleet:certificate_arn"
            ].replace("us-east-1", "us-west-2"),
        },
        {"iofleet:balancer": "alb"},
    ],
    ids=["nginx", "haproxy-tls", "alb"],
)
@pulumi.runtime.test
def test_target_group_is_found_by_listener_port_not_by_tags(overrides: dict[str, Any]) -> Any:
    """ingress-nginx (80 and 443) and HAProxy with TLS get two target groups, and
    getTargetGroup(tags=...) fails unless exactly one matches (the mocks do the same)."""
    fleet = run_stack("dev", overrides)

    def check() -> None:
        listeners = [a for t, a in fleet.calls if t == "aws:lb/getListener:getListener"]
        assert [int(a["port"]) for a in listeners] == [80]
        (alarm,) = [
            a
            for a in fleet.of_type("aws:cloudwatch/metricAlarm:MetricAlarm")
            if a.inputs["metricName"] == "UnHealthyHostCount"
        ]
        assert alarm.inputs["dimensions"]["TargetGroup"] == "targetgroup/k8s-80/1"

    return after_deploy(check)


@pulumi.runtime.test
def test_alb_ingress_forwards_by_default_so_its_listener_names_the_target_group() -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        (ingress,) = fleet.kubernetes("Ingress", "iofleet")
        backend = ingress.inputs["spec"]["defaultBackend"]["service"]
        assert backend == {"name": "iofleet-server", "port": {"name": "http"}}
        ports = [int(a["port"]) for t, a in fleet.calls if t == "aws:lb/getListener:getListener"]
        assert ports == [443]  # with TLS, 80 only redirects

    return after_deploy(check)


# --- the cluster version -----------------------------------------------------------------


@pulumi.runtime.test
def test_default_cluster_version_is_the_newest_known_and_in_standard_support() -> None:
    assert max(EKS_VERSIONS, key=Version) == DEFAULT_CLUSTER_VERSION
    standard_end, extended_end = EKS_VERSIONS[DEFAULT_CLUSTER_VERSION]
    # Written on 2026-11-23; 1.31's standard support ended 2025-11-26 (EKS calendar).
    assert standard_end > datetime.date(2026, 11, 23)
    assert extended_end > standard_end
    assert "1.31" not in EKS_VERSIONS


@pulumi.runtime.test
def test_a_version_past_standard_support_is_a_warning_that_says_what_to_do() -> None:
    warning = support_warning("1.33", datetime.date(2026, 8, 1))
    assert warning is not None
    assert "iofleet:cluster_version" in warning and "2027-07-29" in warning
    assert "one minor version at a time" in warning
    assert support_warning("1.35", datetime.date(2026, 8, 1)) is None


# --- placeholders in the shipped stack files -------------------------------------------

SHIPPED_PLACEHOLDERS = {
    "dev": [
        "iofleet:cluster_public_access_cidrs",
        "iofleet:image",
        "iofleet:autoscaler_image",
        "iofleet:cors_origins",
    ],
    "prod-us-east-1": [
        "iofleet:cluster_public_access_cidrs",
        "iofleet:image",
        "iofleet:autoscaler_image",
        "iofleet:cors_origins",
        "iofleet:certificate_arn",
        "iofleet:alarm_email",
    ],
    "global": ["iofleet:domain", "iofleet:hosted_zone_id"],
}
SHIPPED_PLACEHOLDERS["prod-eu-west-1"] = SHIPPED_PLACEHOLDERS["prod-us-east-1"]


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_shipped_placeholders_stop_the_program_before_any_resource(stack: str) -> None:
    """Every placeholder at once, one line each naming the key and what to put there, and
    nothing created (not a timeout ten minutes into an update)."""
    from pulumi_fleet import stack_config, use_config

    mocks = FleetMocks()
    pulumi.runtime.set_mocks(mocks, project="iofleet", stack=stack, preview=False)
    use_config(stack_config(stack, as_shipped=True))
    import runpy

    with pytest.raises(ConfigError) as caught:
        runpy.run_path(str(ROOT / "infra" / "__main__.py"), run_name="__main__")
    assert mocks.resources == []
    lines = caught.value.problems
    assert [line.split(":")[0] + ":" + line.split(":")[1].split()[0] for line in lines] == (
        SHIPPED_PLACEHOLDERS[stack]
    )
    for line in lines:
        assert "placeholder" in line and "\n" not in line
        assert "put" in line  # what to put there


def _check(*files: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "infra.check", *map(str, files)],
        capture_output=True,
        text=True,
        check=False,
        cwd=ROOT,
        timeout=60,
    )


@pulumi.runtime.test
def test_offline_check_lists_every_problem_of_every_file() -> None:
    result = _check(*(ROOT / f"Pulumi.{s}.yaml" for s in STACKS))
    assert result.returncode == 1, result.stdout + result.stderr
    for stack, keys in SHIPPED_PLACEHOLDERS.items():
        lines = [ln for ln in result.stdout.splitlines() if f"Pulumi.{stack}.yaml: " in ln]
        assert [k for k in keys if any(f": {k}" in ln for ln in lines)] == keys, lines


@pulumi.runtime.test
def test_offline_check_passes_a_ready_stack_and_catches_a_misspelt_key(tmp_path: Path) -> None:
    (tmp_path / "Pulumi.yaml").write_text((ROOT / "Pulumi.yaml").read_text())
    shipped = yaml.safe_load((ROOT / "Pulumi.prod-us-east-1.yaml").read_text())
    ready = {"config": {**shipped["config"], **OPERATOR_VALUES["prod-us-east-1"]}}
    good = tmp_path / "Pulumi.prod-us-east-1.yaml"
    good.write_text(yaml.safe_dump(ready))
    result = _check(good)
    assert result.returncode == 0, result.stdout + result.stderr
    assert result.stdout.strip().endswith(": ok")

    ready["config"]["iofleet:balancr"] = "nginx"
    ready["config"]["iofleet:az_count"] = 9
    ready["config"]["iofleet:jwt_secret"] = {"secure": "v1:abc"}  # encrypted: counts as set
    ready["config"]["iofleet:jwt_public_key"] = "PEM"
    bad = tmp_path / "Pulumi.bad.yaml"
    bad.write_text(yaml.safe_dump(ready))
    result = _check(bad)
    assert result.returncode == 1
    assert "iofleet:balancr is not a known key" in result.stdout
    assert "iofleet:az_count: 9 is out of range; allowed 2..6" in result.stdout


@pulumi.runtime.test
def test_make_has_the_check_stack_target() -> None:
    makefile = (ROOT / "Makefile").read_text()
    assert "check-stack:" in makefile and "-m infra.check Pulumi.$(STACK).yaml" in makefile


# --- namespaces ---------------------------------------------------------------------------


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_every_namespaced_object_lands_in_a_namespace_that_exists(stack: str) -> Any:
    """The dev stack (no Prometheus operator) used to write the dashboard into
    `prometheus_namespace`, which nothing creates there; the prod stacks wrote theirs and
    their ServiceMonitor into `monitoring` on a cluster the same `up` creates (issue 24).
    A new cluster has kube-system and what this program makes, nothing else."""
    fleet = run_stack(stack)

    def check() -> None:
        created = {r.inputs["metadata"]["name"] for r in fleet.kubernetes("Namespace")}
        created |= {"kube-system"}  # there from the start
        created |= {
            r.inputs["namespace"]
            for r in fleet.of_type("kubernetes:helm.sh/v3:Release")
            if r.inputs.get("createNamespace")
        }
        used = {
            r.inputs["metadata"].get("namespace")
            for r in fleet.resources
            if r.is_kubernetes and r.inputs["metadata"].get("namespace")
        }
        assert used <= created, used - created

    return after_deploy(check)


# --- the Prometheus operator on a new cluster ----------------------------------------------

OPERATOR_GROUP = "monitoring.coreos.com/"


@pytest.mark.parametrize("stack", ["prod-us-east-1", "prod-eu-west-1"])
@pulumi.runtime.test
def test_operator_objects_wait_for_the_release_that_installs_their_crds(stack: str) -> Any:
    """No CRD for ServiceMonitor/PrometheusRule exists on a cluster the same `up` makes
    ("no matches for kind ServiceMonitor"): the pinned kube-prometheus-stack release
    installs them and the namespace, and everything that needs either waits for it."""
    from pulumi_fleet import stack_config

    fleet = run_stack(stack)
    namespace = stack_config(stack)["iofleet:prometheus_namespace"]

    def check() -> None:
        (release,) = [
            r
            for r in fleet.of_type("kubernetes:helm.sh/v3:Release")
            if r.inputs["chart"] == "kube-prometheus-stack"
        ]
        assert Version(release.inputs["version"]) >= Version("88.5.3")
        assert release.inputs["namespace"] == namespace and release.inputs["createNamespace"]
        needing = [
            r
            for r in fleet.resources
            if r.is_kubernetes
            and (
                r.inputs["apiVersion"].startswith(OPERATOR_GROUP)
                or r.inputs["metadata"].get("namespace") == namespace
            )
        ]
        assert {r.inputs["kind"] for r in needing} >= {"ServiceMonitor", "PrometheusRule"}
        for r in needing:
            assert release.name in fleet.dependencies[r.name], r.name
        # Prometheus selects our objects by the label they carry.
        spec = release.inputs["values"]["prometheus"]["prometheusSpec"]
        (monitor,) = fleet.kubernetes("ServiceMonitor", "iofleet-server")
        for key, value in spec["serviceMonitorSelector"]["matchLabels"].items():
            assert monitor.inputs["metadata"]["labels"][key] == value
        assert release.inputs["name"] == "prometheus"  # release=prometheus selects its own

    return after_deploy(check)


@pulumi.runtime.test
def test_an_existing_operator_is_used_as_it_is() -> Any:
    fleet = run_stack("prod-us-east-1", {"iofleet:prometheus_stack_install": False})

    def check() -> None:
        charts = [r.inputs["chart"] for r in fleet.of_type("kubernetes:helm.sh/v3:Release")]
        assert "kube-prometheus-stack" not in charts
        assert fleet.kubernetes("ServiceMonitor") and fleet.kubernetes("PrometheusRule")

    return after_deploy(check)


# --- ordering on a first `up` ------------------------------------------------------------


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_lb_controller_release_waits_for_nodes_and_the_cni(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        waits = fleet.dependencies["balancer-controller-lbc"]
        assert {"cluster-nodes", "cluster-vpc-cni"} <= waits, waits

    return after_deploy(check)


@pytest.mark.parametrize(
    ("balancer", "route"),
    [
        ("alb", "balancer-ingress"),
        ("nginx", "balancer-ingress"),
        ("haproxy", "balancer-haproxy-svc"),
    ],
)
@pulumi.runtime.test
def test_server_pods_are_created_after_the_route(balancer: str, route: str) -> Any:
    """The LB controller injects the ALB readiness gate only into pods created after the
    TargetGroupBinding of their Service (pod_readiness_gate.md): the route comes first."""
    fleet = run_stack("dev", {"iofleet:balancer": balancer})

    def check() -> None:
        assert route in fleet.dependencies["server-deployment"]
        if balancer != "haproxy":
            assert "server-public" in fleet.dependencies[route]
        # The Service comes before its pods: Pulumi must not wait for endpoints there.
        (public,) = fleet.kubernetes("Service", "iofleet-server")
        assert public.inputs["metadata"]["annotations"]["pulumi.com/skipAwait"] == "true"
        (ns,) = fleet.kubernetes("Namespace", "iofleet")
        gate = ns.inputs["metadata"]["labels"].get("elbv2.k8s.aws/pod-readiness-gate-inject")
        assert gate == ("enabled" if balancer == "alb" else None)

    return after_deploy(check)


# --- who may use the cluster ---------------------------------------------------------------

ROLE = "arn:aws:iam::444455556666:role/platform-admins"
CI_ROLE = "arn:aws:iam::444455556666:role/ci-deployer"


@pulumi.runtime.test
def test_admin_principals_get_access_entries_with_the_cluster_admin_policy() -> Any:
    """CI (the mocked caller) runs the first `up` and is listed, as the docs advise: EKS
    bootstraps its entry, so the program makes one for the other principal only (a
    second entry for the creator fails with 409 ResourceInUseException, issue 24)."""

    async def run() -> None:
        fleet = await deployed("dev", {"iofleet:cluster_admin_arns": [ROLE, CI_ROLE]})
        other = await deployed(
            "dev",
            {"iofleet:cluster_admin_arns": [ROLE, CI_ROLE]},
            mocks=FleetMocks(caller_role="arn:aws:iam::444455556666:role/someone-else"),
        )

        def standard(mocks: FleetMocks) -> list[Recorded]:
            # People and CI (EC2_LINUX is the Karpenter node role's).
            return [
                e
                for e in mocks.of_type("aws:eks/accessEntry:AccessEntry")
                if e.inputs["type"] == "STANDARD"
            ]

        def check() -> None:
            entries = standard(fleet)
            assert [e.inputs["principalArn"] for e in entries] == [ROLE]
            policies = fleet.of_type("aws:eks/accessPolicyAssociation:AccessPolicyAssociation")
            assert [p.inputs["principalArn"] for p in policies] == [ROLE]
            (eks,) = fleet.of_type("aws:eks/cluster:Cluster")
            assert eks.inputs["accessConfig"]["bootstrapClusterCreatorAdminPermissions"] is True
            # Run by a principal not listed: both listed ones get entries.
            entries = standard(other)
            assert sorted(e.inputs["principalArn"] for e in entries) == sorted([ROLE, CI_ROLE])
            for policy in policies:
                assert policy.inputs["policyArn"].endswith("AmazonEKSClusterAdminPolicy")
                assert policy.inputs["accessScope"] == {"type": "cluster"}

        check()

    return run()


@pulumi.runtime.test
def test_control_plane_logs_expire() -> Any:
    """EKS creates /aws/eks/<name>/cluster without retention when it does not exist: the
    audit log (every API call) would be kept and billed forever (issue 24)."""
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        (eks,) = fleet.of_type("aws:eks/cluster:Cluster")
        group = fleet.one("aws:cloudwatch/logGroup:LogGroup")
        assert group.inputs["name"] == f"/aws/eks/{eks.inputs['name']}/cluster"
        assert 1 <= group.inputs["retentionInDays"] <= 365
        assert group.name in fleet.dependencies[eks.name]

    return after_deploy(check)


def _kubeconfig_user(fleet: FleetMocks) -> dict[str, Any]:
    (provider,) = fleet.of_type("pulumi:providers:kubernetes")
    kubeconfig = json.loads(provider.inputs["kubeconfig"])
    return kubeconfig["users"][0]["user"]["exec"]


@pulumi.runtime.test
def test_kubeconfig_asks_for_tokens_as_the_stacks_own_aws_identity() -> Any:
    async def run() -> None:
        fleet = await deployed(
            "dev",
            {"aws:profile": "acme-prod", "aws:assumeRoles": [{"roleArn": CI_ROLE}]},
        )
        plain = await deployed("prod-us-east-1")

        def check() -> None:
            user = _kubeconfig_user(fleet)
            assert user["args"][-2:] == ["--role-arn", CI_ROLE]
            assert user["env"] == [{"name": "AWS_PROFILE", "value": "acme-prod"}]
            user = _kubeconfig_user(plain)
            assert "--role-arn" not in user["args"] and "env" not in user

        check()

    return run()


# --- global routing ------------------------------------------------------------------------


@pulumi.runtime.test
def test_accelerator_provider_acts_as_the_stack_and_443_goes_only_to_tls_regions() -> Any:
    fleet = run_stack(
        "global",
        {
            "iofleet:global_routing": "accelerator",
            "aws:profile": "acme-net",
            "aws:assumeRoles": [{"roleArn": CI_ROLE}],
        },
    )

    def check() -> None:
        (provider,) = [
            p
            for p in fleet.of_type("pulumi:providers:aws")
            if p.inputs.get("region") == "us-west-2"
        ]
        assert provider.inputs["profile"] == "acme-net"
        assert json.loads(provider.inputs["assumeRoles"])[0]["roleArn"] == CI_ROLE
        groups = fleet.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
        for group in groups:
            # ALB/NLB endpoints: Global Accelerator uses the balancer's own health checks.
            assert not any(k.startswith("healthCheck") for k in group.inputs), group.inputs
            (endpoint,) = group.inputs["endpointConfigurations"]
            tls_port = group.name.endswith("-443")
            serves_tls = group.inputs["endpointGroupRegion"] != HTTP_REGION
            assert endpoint["weight"] == (0 if tls_port and not serves_tls else 100)

    return after_deploy(check)


@pytest.mark.parametrize(
    ("balancers", "expected"),
    [
        ({"us-east-1": "nginx", HTTP_REGION: "haproxy"}, {"us-east-1": False, HTTP_REGION: True}),
        ({}, {"us-east-1": True, HTTP_REGION: True}),
    ],
    ids=["nlb", "alb"],
)
@pulumi.runtime.test
def test_accelerator_preserves_client_ips_only_where_aws_allows_it(
    balancers: dict[str, str], expected: dict[str, bool]
) -> Any:
    """AWS refuses client IP preservation for an NLB endpoint with a TLS listener (issue
    24): us-east-1 serves TLS on an NLB (nginx), the HTTP region runs HAProxy's NLB
    without TLS; with ALBs (the default mock) every endpoint keeps client addresses."""
    fleet = run_stack(
        "global", {"iofleet:global_routing": "accelerator"}, mocks=FleetMocks(balancers=balancers)
    )

    def check() -> None:
        preserved = {
            g.inputs["endpointGroupRegion"]: g.inputs["endpointConfigurations"][0][
                "clientIpPreservationEnabled"
            ]
            for g in fleet.of_type("aws:globalaccelerator/endpointGroup:EndpointGroup")
        }
        assert preserved == expected

    return after_deploy(check)


# --- Prometheus selector --------------------------------------------------------------------


@pulumi.runtime.test
def test_prometheus_selector_label_is_configurable() -> Any:
    async def run() -> None:
        fleet = await deployed(
            "prod-us-east-1", {"iofleet:prometheus_selector_label": "release=kps"}
        )
        unlabelled = await deployed("prod-us-east-1", {"iofleet:prometheus_selector_label": "none"})

        def check() -> None:
            for kind in ("ServiceMonitor", "PrometheusRule"):
                (found,) = fleet.kubernetes(kind, "iofleet-server")
                assert found.inputs["metadata"]["labels"]["release"] == "kps"
                (found,) = unlabelled.kubernetes(kind, "iofleet-server")
                assert "release" not in found.inputs["metadata"]["labels"]

        check()

    return run()


# --- provider versions ----------------------------------------------------------------------


@pulumi.runtime.test
def test_pulumi_aws_floor_is_what_the_program_is_tested_with() -> None:
    """Older pulumi-aws required the OIDC provider's thumbprint list, which the program
    leaves out (IAM trusts EKS issuers through its own CAs)."""
    project = (ROOT / "pyproject.toml").read_text()
    line = next(ln for ln in project.splitlines() if '"pulumi-aws' in ln)
    requirement = Requirement(line.strip().strip(",").strip('"'))
    installed = Version(version("pulumi_aws"))
    assert installed in requirement.specifier
    floor = min(Version(s.version) for s in requirement.specifier if s.operator == ">=")
    assert floor.major == installed.major >= 7
    parameter = inspect.signature(aws.iam.OpenIdConnectProviderArgs).parameters
    assert parameter["thumbprint_lists"].default is None  # optional in this provider
