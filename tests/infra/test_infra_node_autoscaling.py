"""Karpenter and the warm headroom (infra/node_autoscaling.py) under mocks: the custom
resources against their CRDs' fields, the chart against the cluster version, IAM scoped
to the cluster's tags, the drain respected, the headroom below the servers, and each new
policy rule failing on a broken copy."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

import jsonschema
import pulumi
import pytest
from pulumi_fleet import (
    REGIONAL_STACKS,
    FleetMocks,
    Recorded,
    after_deploy,
    run_stack,
    stack_config,
)
from test_infra_manifests import validate_all
from test_infra_policy import broken, find, violations

from infra.config import EKS_VERSIONS, validate
from infra.node_autoscaling import (
    HEADROOM,
    KARPENTER_CHART,
    KARPENTER_KUBERNETES_MAX,
    KARPENTER_KUBERNETES_MIN,
    KARPENTER_SA,
)

RELEASE = "kubernetes:helm.sh/v3:Release"
NODE_POOL = "kubernetes:karpenter.sh/v1:NodePool"
NODE_CLASS = "kubernetes:karpenter.k8s.aws/v1:EC2NodeClass"
DURATION = r"^(([0-9]+(s|m|h))+|Never)$"
OPERATORS = ["Gte", "Lte", "In", "NotIn", "Exists", "DoesNotExist", "Gt", "Lt"]

# The fields the program sets, with their types, enums and patterns as the CRDs of
# aws/karpenter-provider-aws v1.14.1 state them (pkg/apis/crds/karpenter.sh_nodepools.yaml
# and karpenter.k8s.aws_ec2nodeclasses.yaml, `v1`). Closed objects: a misspelt or
# invented field fails here, as the API server's structural schema would prune or refuse it.
_STRINGS = {"type": "object", "additionalProperties": {"type": "string"}}
NODE_POOL_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["template"],
    "additionalProperties": False,
    "properties": {
        "template": {
            "type": "object",
            "required": ["spec"],
            "additionalProperties": False,
            "properties": {
                "metadata": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"labels": _STRINGS, "annotations": _STRINGS},
                },
                "spec": {
                    "type": "object",
                    "required": ["nodeClassRef", "requirements"],
                    "additionalProperties": False,
                    "properties": {
                        "nodeClassRef": {
                            "type": "object",
                            "required": ["group", "kind", "name"],
                            "additionalProperties": False,
                            "properties": {
                                "group": {"type": "string", "pattern": "^[^/]*$"},
                                "kind": {"type": "string"},
                                "name": {"type": "string"},
                            },
                        },
                        "requirements": {
                            "type": "array",
                            "maxItems": 100,
                            "items": {
                                "type": "object",
                                "required": ["key", "operator"],
                                "additionalProperties": False,
                                "properties": {
                                    "key": {"type": "string", "maxLength": 316},
                                    "operator": {"enum": OPERATORS},
                                    "values": {
                                        "type": "array",
                                        "items": {"type": "string", "maxLength": 63},
                                    },
                                    "minValues": {"type": "integer", "minimum": 1},
                                },
                            },
                        },
                        "expireAfter": {"type": "string", "pattern": DURATION},
                        "terminationGracePeriod": {
                            "type": "string",
                            "pattern": r"^([0-9]+(s|m|h))+$",
                        },
                    },
                },
            },
        },
        "disruption": {
            "type": "object",
            "required": ["consolidateAfter"],
            "additionalProperties": False,
            "properties": {
                "consolidateAfter": {"type": "string", "pattern": DURATION},
                "consolidationPolicy": {
                    "enum": ["WhenEmpty", "WhenEmptyOrUnderutilized", "Balanced"]
                },
                "budgets": {
                    "type": "array",
                    "maxItems": 50,
                    "items": {
                        "type": "object",
                        "required": ["nodes"],
                        "additionalProperties": False,
                        "properties": {
                            "nodes": {"type": "string", "pattern": r"^((100|[0-9]{1,2})%|[0-9]+)$"},
                            "reasons": {
                                "type": "array",
                                "items": {"enum": ["Underutilized", "Empty", "Drifted"]},
                            },
                            "schedule": {"type": "string"},
                            "duration": {"type": "string"},
                        },
                    },
                },
            },
        },
        "limits": _STRINGS,
        "weight": {"type": "integer", "minimum": 1, "maximum": 100},
    },
}


def _terms(fields: dict[str, Any]) -> dict[str, Any]:
    """A selector-term list (1..30 terms) of the given fields only."""
    item = {"type": "object", "additionalProperties": False, "properties": fields}
    return {"type": "array", "minItems": 1, "maxItems": 30, "items": item}


NODE_CLASS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["amiSelectorTerms", "securityGroupSelectorTerms", "subnetSelectorTerms"],
    "additionalProperties": False,
    "properties": {
        "role": {"type": "string", "minLength": 1},
        "amiSelectorTerms": _terms({"alias": {"type": "string", "maxLength": 30}}),
        "subnetSelectorTerms": _terms({"id": {"type": "string", "pattern": "subnet-[0-9a-z]+"}}),
        "securityGroupSelectorTerms": _terms({"id": {"type": "string", "pattern": "sg-[0-9a-z]+"}}),
        "metadataOptions": {
            "type": "object",
            "additionalProperties": False,
            "properties": {
                "httpEndpoint": {"enum": ["enabled", "disabled"]},
                "httpProtocolIPv6": {"enum": ["enabled", "disabled"]},
                "httpPutResponseHopLimit": {"type": "integer", "minimum": 1, "maximum": 64},
                "httpTokens": {"enum": ["required", "optional"]},
            },
        },
        "tags": _STRINGS,
    },
}


def _one(fleet: FleetMocks, typ: str) -> dict[str, Any]:
    (record,) = fleet.of_type(typ)
    return record.manifest()


def _karpenter(fleet: FleetMocks) -> dict[str, Any]:
    (release,) = [r for r in fleet.of_type(RELEASE) if r.inputs["chart"] == KARPENTER_CHART[0]]
    return release.inputs


def _controller_policy(fleet: FleetMocks) -> dict[str, Any]:
    record = fleet.one("aws:iam/rolePolicy:RolePolicy", "node-autoscaler-controller")
    policy: dict[str, Any] = json.loads(record.inputs["policy"])
    return policy


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_node_pool_and_node_class_have_their_crds_shape(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        pool, node_class = _one(fleet, NODE_POOL), _one(fleet, NODE_CLASS)
        assert pool["apiVersion"] == "karpenter.sh/v1" and pool["kind"] == "NodePool"
        assert node_class["apiVersion"] == "karpenter.k8s.aws/v1"
        jsonschema.validate(pool["spec"], NODE_POOL_SCHEMA)
        jsonschema.validate(node_class["spec"], NODE_CLASS_SCHEMA)
        # The pool references this class; the class launches as the node role.
        ref = pool["spec"]["template"]["spec"]["nodeClassRef"]
        assert ref == {
            "group": "karpenter.k8s.aws",
            "kind": "EC2NodeClass",
            "name": node_class["metadata"]["name"],
        }
        role = fleet.one("aws:iam/role:Role", "node-autoscaler-nodes")
        assert node_class["spec"]["role"] == role.inputs.get("name", role.name)
        # The private subnets only, and the cluster security group Redis admits.
        private = [r for r in fleet.of_type("aws:ec2/subnet:Subnet") if "private" in r.name]
        assert len(node_class["spec"]["subnetSelectorTerms"]) == len(private) > 0
        assert node_class["spec"]["securityGroupSelectorTerms"] == [{"id": "sg-c"}]
        assert node_class["spec"]["metadataOptions"]["httpTokens"] == "required"
        # Every built-in object still validates strictly alongside the custom ones.
        validate_all(fleet)

    return after_deploy(check)


@pulumi.runtime.test
def test_the_crd_shape_check_refuses_a_misspelt_field() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        pool = _one(fleet, NODE_POOL)
        pool["spec"]["disruption"]["consolidateAfterSeconds"] = 300
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(pool["spec"], NODE_POOL_SCHEMA)
        pool = _one(fleet, NODE_POOL)
        pool["spec"]["disruption"]["consolidationPolicy"] = "WhenUnderutilized"  # v1beta1
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(pool["spec"], NODE_POOL_SCHEMA)

    return after_deploy(check)


def _minor(version: str) -> tuple[int, int]:
    major, minor = version.split(".")[:2]
    return int(major), int(minor)


@pulumi.runtime.test
def test_the_chart_is_pinned_to_a_release_supporting_every_cluster_version() -> None:
    chart, version = KARPENTER_CHART
    assert chart == "oci://public.ecr.aws/karpenter/karpenter"
    assert re.fullmatch(r"\d+\.\d+\.\d+", version)  # pinned, not a range
    # The compatibility matrix (website/content/en/docs/upgrading/compatibility.md, v1.14.1).
    for cluster in EKS_VERSIONS:
        assert _minor(KARPENTER_KUBERNETES_MIN[cluster]) <= _minor(version), cluster
        assert _minor(cluster) <= _minor(KARPENTER_KUBERNETES_MAX), cluster


@pulumi.runtime.test
def test_controller_iam_is_scoped_to_the_clusters_tags() -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        cluster = "iofleet-prod-us-east-1"
        owned = f"kubernetes.io/cluster/{cluster}"
        policy = _controller_policy(fleet)
        record = fleet.one("aws:iam/rolePolicy:RolePolicy", "node-autoscaler-controller")
        assert len(record.inputs["policy"]) < 10_240  # IAM's inline-policy limit
        reads = re.compile(
            r"^(ec2:Describe\w+|ssm:GetParameter|pricing:GetProducts|iam:(Get|List)\w+"
            r"|arc-zonal-shift:GetManagedResource)$"
        )
        launched_from = ("image", "snapshot", "security-group", "subnet", "capacity-reservation",
                         "placement-group")  # fmt: skip
        for statement in policy["Statement"]:
            actions = statement["Action"]
            actions = [actions] if isinstance(actions, str) else actions
            resources = statement["Resource"]
            resources = [resources] if isinstance(resources, str) else resources
            text = json.dumps(statement.get("Condition", {}))
            if all(reads.match(a) for a in actions):
                continue  # reads may be unscoped
            assert "*" not in resources, statement["Sid"]
            writes_ec2 = any(a.split(":")[0] == "ec2" for a in actions)
            if writes_ec2 and not all(
                r.split(":")[-1].split("/")[0] in launched_from for r in resources
            ):
                # Creating, tagging or deleting: only what carries the cluster's tags.
                assert f'"aws:RequestTag/{owned}": "owned"' in text or (
                    f'"aws:ResourceTag/{owned}": "owned"' in text
                ), statement["Sid"]
                assert "karpenter.sh/nodepool" in text, statement["Sid"]
            elif writes_ec2:
                assert set(actions) <= {"ec2:RunInstances", "ec2:CreateFleet"}, statement["Sid"]
            if any(a.startswith("iam:") and "InstanceProfile" in a for a in actions):
                assert owned in text and "karpenter.k8s.aws/ec2nodeclass" in text
        by_sid = {s["Sid"]: s for s in policy["Statement"]}
        node_role = fleet.one("aws:iam/role:Role", "node-autoscaler-nodes")
        assert by_sid["AllowPassingInstanceRole"]["Resource"] == f"arn:aws:mock:::{node_role.name}"
        queue = fleet.one("aws:sqs/queue:Queue")
        assert by_sid["AllowInterruptionQueueActions"]["Resource"] == f"arn:aws:mock:::{queue.name}"
        assert by_sid["AllowAPIServerEndpointDiscovery"]["Resource"] == (
            f"arn:aws:eks:us-east-1:444455556666:cluster/{cluster}"
        )
        zonal = by_sid["AllowZonalShiftStatusReadOnly"]["Condition"]["StringEquals"]
        cluster_arn = f"arn:aws:eks:us-east-1:444455556666:cluster/{cluster}"
        assert zonal == {"arc-zonal-shift:ResourceIdentifier": cluster_arn}
        # Only the chart's service account may assume the role (IRSA).
        trust = json.loads(fleet.one("aws:iam/role:Role", "node-autoscaler-controller").inputs[
            "assumeRolePolicy"
        ])  # fmt: skip
        (condition,) = [s["Condition"]["StringEquals"] for s in trust["Statement"]]
        assert f"system:serviceaccount:kube-system:{KARPENTER_SA}" in condition.values()

    return after_deploy(check)


# The controller policy's statements and actions in aws/karpenter-provider-aws v1.14.1,
# website/content/en/docs/getting-started/getting-started-with-karpenter/cloudformation.yaml
# (its six managed policies; the docs/ tree is v1.14 at that tag).
UPSTREAM_CONTROLLER_ACTIONS = {
    "AllowScopedEC2InstanceAccessActions": ["ec2:CreateFleet", "ec2:RunInstances"],
    "AllowScopedEC2LaunchTemplateAccessActions": ["ec2:CreateFleet", "ec2:RunInstances"],
    "AllowScopedEC2InstanceActionsWithTags": [
        "ec2:CreateFleet", "ec2:CreateLaunchTemplate", "ec2:RunInstances"
    ],
    "AllowScopedResourceCreationTagging": ["ec2:CreateTags"],
    "AllowScopedResourceTagging": ["ec2:CreateTags"],
    "AllowScopedDeletion": ["ec2:DeleteLaunchTemplate", "ec2:TerminateInstances"],
    "AllowPassingInstanceRole": ["iam:PassRole"],
    "AllowScopedInstanceProfileCreationActions": ["iam:CreateInstanceProfile"],
    "AllowScopedInstanceProfileTagActions": ["iam:TagInstanceProfile"],
    "AllowScopedInstanceProfileActions": [
        "iam:AddRoleToInstanceProfile", "iam:DeleteInstanceProfile",
        "iam:RemoveRoleFromInstanceProfile",
    ],
    "AllowAPIServerEndpointDiscovery": ["eks:DescribeCluster"],
    "AllowInterruptionQueueActions": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
    "AllowZonalShiftStatusReadOnly": ["arc-zonal-shift:GetManagedResource"],
    "AllowRegionalReadActions": [
        "ec2:DescribeCapacityReservations", "ec2:DescribeImages", "ec2:DescribeInstanceStatus",
        "ec2:DescribeInstanceTypeOfferings", "ec2:DescribeInstanceTypes",
        "ec2:DescribeInstances", "ec2:DescribeLaunchTemplates", "ec2:DescribePlacementGroups",
        "ec2:DescribeSecurityGroups", "ec2:DescribeSpotPriceHistory", "ec2:DescribeSubnets",
    ],
    "AllowSSMReadActions": ["ssm:GetParameter"],
    "AllowPricingReadActions": ["pricing:GetProducts"],
    "AllowUnscopedInstanceProfileListAction": ["iam:ListInstanceProfiles"],
    "AllowInstanceProfileReadActions": ["iam:GetInstanceProfile"],
}  # fmt: skip


@pulumi.runtime.test
def test_controller_policy_grants_what_the_pinned_release_calls() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        granted = {
            s["Sid"]: sorted([s["Action"]] if isinstance(s["Action"], str) else s["Action"])
            for s in _controller_policy(fleet)["Statement"]
        }
        assert granted == UPSTREAM_CONTROLLER_ACTIONS

    return after_deploy(check)


@pulumi.runtime.test
def test_interruption_queue_rules_and_node_access() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        queue = fleet.one("aws:sqs/queue:Queue")
        assert queue.inputs["sqsManagedSseEnabled"] is True
        queue_policy = json.loads(fleet.one("aws:sqs/queuePolicy:QueuePolicy").inputs["policy"])
        deny = [s for s in queue_policy["Statement"] if s["Effect"] == "Deny"]
        assert deny and deny[0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}
        rules = fleet.of_type("aws:cloudwatch/eventRule:EventRule")
        details = {json.loads(r.inputs["eventPattern"])["detail-type"][0] for r in rules}
        assert {"EC2 Spot Instance Interruption Warning", "AWS Health Event",
                "EC2 Instance Rebalance Recommendation",
                "EC2 Instance State-change Notification"} <= details  # fmt: skip
        targets = fleet.of_type("aws:cloudwatch/eventTarget:EventTarget")
        assert len(targets) == len(rules) and {t.inputs["arn"] for t in targets} == {
            f"arn:aws:mock:::{queue.name}"
        }
        values = _karpenter(fleet)["values"]
        assert values["settings"]["interruptionQueue"] == queue.inputs["name"]
        assert values["settings"]["clusterName"] == "iofleet-dev"
        # The node role joins the cluster through an EC2_LINUX access entry.
        role = fleet.one("aws:iam/role:Role", "node-autoscaler-nodes")
        (entry,) = [
            e
            for e in fleet.of_type("aws:eks/accessEntry:AccessEntry")
            if e.inputs["type"] == "EC2_LINUX"
        ]
        assert entry.inputs["principalArn"] == f"arn:aws:mock:::{role.name}"

    return after_deploy(check)


@pulumi.runtime.test
def test_the_controller_runs_on_the_managed_node_group_only() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        values = _karpenter(fleet)["values"]
        group = fleet.one("aws:eks/nodeGroup:NodeGroup")
        selector = values["nodeSelector"]
        assert all(
            group.inputs["labels"].get(k) == v
            for k, v in selector.items()
            if k != "kubernetes.io/os"
        )
        assert set(selector) - {"kubernetes.io/os"}, "no managed-node-group label in nodeSelector"
        # Nodes the NodePool makes carry another pool label: the selector cannot match them.
        pool = _one(fleet, NODE_POOL)
        labels = pool["spec"]["template"]["metadata"]["labels"]
        assert any(labels.get(k) != v for k, v in selector.items() if k != "kubernetes.io/os")
        assert violations("karpenter-off-its-own-nodes", fleet.resources) == []
        # The release waits for the managed nodes and its own access entry.
        release = next(r for r in fleet.of_type(RELEASE) if r.inputs["chart"] == KARPENTER_CHART[0])
        assert {"cluster-nodes", "node-autoscaler-nodes"} <= fleet.dependencies[release.name]

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_disruption_goes_through_the_drain(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        disruption = _one(fleet, NODE_POOL)["spec"]["disruption"]
        (server,) = fleet.kubernetes("Deployment", "iofleet-server")
        pod = server.manifest()["spec"]["template"]
        grace = pod["spec"]["terminationGracePeriodSeconds"]
        env = {e["name"]: e.get("value") for e in pod["spec"]["containers"][0]["env"]}
        drain = int(env["IOFLEET_DRAIN_DELAY"]) + int(env["IOFLEET_DRAIN_SECONDS"])
        (hpa,) = fleet.kubernetes("HorizontalPodAutoscaler", "iofleet-server")
        window = hpa.manifest()["spec"]["behavior"]["scaleDown"]["stabilizationWindowSeconds"]
        # Not a candidate before the HPA's own window and one drain have passed.
        assert disruption["consolidateAfter"] == f"{window + drain}s"
        assert disruption["consolidationPolicy"] == "Balanced"
        assert disruption["budgets"] == [{"nodes": "1"}]
        node_grace = _one(fleet, NODE_POOL)["spec"]["template"]["spec"]["terminationGracePeriod"]
        assert int(node_grace.removesuffix("h")) * 3600 > 10 * grace
        # No pod opts out of disruption: the server's eviction path is its drain.
        annotations = pod.get("metadata", {}).get("annotations", {})
        assert "karpenter.sh/do-not-disrupt" not in annotations
        (pdb,) = fleet.kubernetes("PodDisruptionBudget", "iofleet-server")
        assert pdb.inputs["spec"]["maxUnavailable"] == 1

    return after_deploy(check)


@pulumi.runtime.test
def test_without_a_node_autoscaler_or_headroom_none_is_made() -> Any:
    fleet = run_stack("dev", {"iofleet:node_autoscaler": "none", "iofleet:headroom_pods": 0})

    def check() -> None:
        assert [r for r in fleet.of_type(RELEASE) if r.inputs["chart"] == KARPENTER_CHART[0]] == []
        assert fleet.of_type(NODE_POOL) == [] and fleet.of_type("aws:sqs/queue:Queue") == []
        assert fleet.kubernetes("Deployment", HEADROOM) == []
        assert fleet.kubernetes("PriorityClass") == []

    return after_deploy(check)


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_headroom_priority_is_below_the_servers(stack: str) -> Any:
    fleet = run_stack(stack, {"iofleet:headroom_pods": 3})

    def check() -> None:
        (priority,) = fleet.kubernetes("PriorityClass", HEADROOM)
        classes = {
            p.inputs["metadata"]["name"]: p.inputs for p in fleet.kubernetes("PriorityClass")
        }
        (server,) = fleet.kubernetes("Deployment", "iofleet-server")
        server_pod = server.inputs["spec"]["template"]["spec"]
        server_class = server_pod.get("priorityClassName")
        server_priority = classes[server_class]["value"] if server_class else 0
        assert priority.inputs["value"] < server_priority
        assert priority.inputs["preemptionPolicy"] == "Never"
        assert priority.inputs["globalDefault"] is False
        (headroom,) = fleet.kubernetes("Deployment", HEADROOM)
        spec = headroom.manifest()["spec"]
        assert spec["replicas"] == 3
        pod = spec["template"]["spec"]
        assert pod["priorityClassName"] == HEADROOM
        assert pod["terminationGracePeriodSeconds"] == 0
        # One placeholder holds exactly one server pod's room.
        requests = pod["containers"][0]["resources"]["requests"]
        assert requests == server.manifest()["spec"]["template"]["spec"]["containers"][0][
            "resources"
        ]["requests"]  # fmt: skip
        checked = validate_all(fleet)
        assert f"PriorityClass/{HEADROOM}" in checked and f"Deployment/{HEADROOM}" in checked
        assert violations("headroom-below-servers", fleet.resources) == []

    return after_deploy(check)


def _release_values(resources: list[Recorded]) -> dict[str, Any]:
    release = next(r for r in resources if r.type == RELEASE and "karpenter" in r.inputs["chart"])
    values: dict[str, Any] = release.inputs["values"]
    return values


GATE_BREAKS: list[tuple[str, Callable[[dict[str, Any]], None]]] = [
    ("gate left to the chart default",
     lambda v: v["settings"]["featureGates"].pop("podDeletionCostManagement")),
    ("gate on", lambda v: v["settings"]["featureGates"].update(podDeletionCostManagement=True)),
    ("gate on through FEATURE_GATES",
     lambda v: v.setdefault("controller", {}).setdefault("env", []).append(
         {"name": "FEATURE_GATES", "value": "NodeRepair=false,PodDeletionCostManagement=true"}
     )),
]  # fmt: skip


@pytest.mark.parametrize(("what", "change"), GATE_BREAKS, ids=[w for w, _ in GATE_BREAKS])
@pulumi.runtime.test
def test_deletion_cost_policy_fails_a_karpenter_that_rewrites_it(
    what: str, change: Callable[[dict[str, Any]], None]
) -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        name = "karpenter-keeps-pod-deletion-cost"
        assert violations(name, fleet.resources) == []
        found = violations(name, broken(fleet, lambda rs: change(_release_values(rs))))
        assert len(found) == 1 and re.search("PodDeletionCostManagement", found[0], re.I), found

    return after_deploy(check)


@pulumi.runtime.test
def test_placement_policy_fails_a_controller_allowed_on_its_own_nodes() -> Any:
    fleet = run_stack("dev")

    def no_affinity(resources: list[Recorded]) -> None:
        _release_values(resources).pop("affinity")

    def any_node(resources: list[Recorded]) -> None:
        terms = _release_values(resources)["affinity"]["nodeAffinity"][
            "requiredDuringSchedulingIgnoredDuringExecution"
        ]["nodeSelectorTerms"]  # fmt: skip
        terms.append({"matchExpressions": [{"key": "kubernetes.io/os", "operator": "Exists"}]})

    def check() -> None:
        name = "karpenter-off-its-own-nodes"
        for change in (no_affinity, any_node):
            assert len(violations(name, broken(fleet, change))) == 1, change.__name__

    return after_deploy(check)


@pulumi.runtime.test
def test_headroom_policy_fails_placeholders_that_do_not_yield() -> Any:
    fleet = run_stack("dev")

    def priority(resources: list[Recorded]) -> dict[str, Any]:
        return find(resources, "PriorityClass", HEADROOM)

    def at_server_priority(resources: list[Recorded]) -> None:
        priority(resources)["value"] = 0.0

    def preempting(resources: list[Recorded]) -> None:
        priority(resources)["preemptionPolicy"] = "PreemptLowerPriority"

    def without_class(resources: list[Recorded]) -> None:
        resources[:] = [r for r in resources if r.inputs.get("kind") != "PriorityClass"]

    def check() -> None:
        name = "headroom-below-servers"
        (found,) = violations(name, broken(fleet, at_server_priority))
        assert "priority 0 must be below the server pods' (0)" in found
        (found,) = violations(name, broken(fleet, preempting))
        assert "preemptionPolicy Never" in found
        (found,) = violations(name, broken(fleet, without_class))
        assert "needs its own PriorityClass" in found

    return after_deploy(check)


@pulumi.runtime.test
def test_bad_node_autoscaling_keys_are_named() -> None:
    base = {
        key.removeprefix("iofleet:"): value
        for key, value in stack_config("dev").items()
        if key.startswith("iofleet:")
    }
    for key, value, fragment in (
        ("node_ami_alias", "al2@latest", "al2023@latest or al2023@vYYYYMMDD"),
        ("node_autoscaler", "cluster-autoscaler", "karpenter"),
        ("headroom_pods", "-1", "out of range"),
    ):
        config, problems, _ = validate({**base, key: value}, stack="dev", region="us-west-2")
        assert config is None
        assert any(p.startswith(f"iofleet:{key}") and fragment in p for p in problems), problems


@pulumi.runtime.test
def test_placeholders_do_not_take_the_rollouts_surge_room() -> Any:
    """A surge pod preempts a placeholder, so the node group's surge-room check does not
    count placeholders (however many) as pods needing room."""
    fleet = run_stack("prod-us-east-1", {"iofleet:headroom_pods": 40})

    def check() -> None:
        assert violations("rollout-surge-fits-nodes", fleet.resources) == []
        assert violations("headroom-below-servers", fleet.resources) == []

    return after_deploy(check)
