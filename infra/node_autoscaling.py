"""Node capacity that follows the pods: Karpenter (`NodeAutoscaler`) and a warm buffer of
low-priority placeholder pods (`Headroom`) that server pods preempt.

Why Karpenter rather than the Cluster Autoscaler (docs/infra.md, "Nodes"): it launches
an instance for the pending pods themselves (no node-group template to match, one batch
for many pods), drains through the Eviction API (PDBs, preStop and grace honoured), ranks
consolidation candidates by their pods' disruption cost - which reads the
`controller.kubernetes.io/pod-deletion-cost` the iofleet autoscaler keeps - and handles
Spot/health interruptions through its own queue.

Sources this module follows (aws/karpenter-provider-aws v1.14.1): the Helm chart
`charts/karpenter` (values `settings.*`, `affinity`, `nodeSelector`), the CRDs
`pkg/apis/crds/karpenter.sh_nodepools.yaml` and `karpenter.k8s.aws_ec2nodeclasses.yaml`,
the getting-started CloudFormation template (IAM, SQS, EventBridge) and
`website/content/en/docs/concepts/disruption.md`; the compatibility matrix there lists
Kubernetes 1.35 from Karpenter 1.9 and 1.36 from 1.13.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.cluster import NODE_POLICIES, Cluster, _assume_role
from infra.config import RegionalConfig
from infra.workloads import RESTRICTED_CONTAINER, RESTRICTED_POD, meta

KARPENTER_CHART = ("oci://public.ecr.aws/karpenter/karpenter", "1.14.1")
# The compatibility matrix (website/content/en/docs/upgrading/compatibility.md at v1.14.1):
# the first Karpenter minor for each Kubernetes minor, and the newest one 1.14 supports.
KARPENTER_KUBERNETES_MIN = {"1.33": "1.5", "1.34": "1.6", "1.35": "1.9", "1.36": "1.13"}
KARPENTER_KUBERNETES_MAX = "1.36"
KARPENTER_NAMESPACE = "kube-system"
KARPENTER_SA = "karpenter"
NODE_POOL = "iofleet"
NODE_CLASS = "iofleet"
MANAGED_POOL_LABEL = {"iofleet.io/pool": "default"}
"""The managed node group's label (infra/cluster.py): Karpenter's controller runs there."""
KARPENTER_POOL_LABEL = {"iofleet.io/pool": "karpenter"}
NODE_DRAIN_LIMIT = "2h"
"""NodePool terminationGracePeriod: how long one node may drain before Karpenter deletes
what is left. Each server pod drains in `termination_grace_seconds` and the PDB lets one
go at a time, so a node of a dozen pods drains in well under an hour; without a bound, a
PDB that never allows an eviction would pin an expired node forever (disruption.md)."""
NODE_EXPIRY = "720h"
"""Karpenter's own default: nodes are replaced monthly (new AMIs, kernel fixes)."""

# EventBridge rules that feed the interruption queue (CloudFormation template, v1.14).
INTERRUPTION_EVENTS = {
    "health": ("aws.health", "AWS Health Event"),
    "spot": ("aws.ec2", "EC2 Spot Instance Interruption Warning"),
    "rebalance": ("aws.ec2", "EC2 Instance Rebalance Recommendation"),
    "state-change": ("aws.ec2", "EC2 Instance State-change Notification"),
    "reservation": ("aws.ec2", "EC2 Capacity Reservation Instance Interruption Warning"),
}

HEADROOM = "iofleet-headroom"
HEADROOM_LABELS = {"app.kubernetes.io/name": HEADROOM, "app.kubernetes.io/part-of": "iofleet"}
HEADROOM_PRIORITY = -10
"""Below every pod without a PriorityClass (0, the server's): the scheduler preempts
placeholders for a pending server pod, never the reverse."""
PAUSE_IMAGE = "registry.k8s.io/pause:3.10"


def consolidate_after(settings: RegionalConfig) -> str:
    """A node becomes a consolidation candidate only after no pod came or went on it for
    the HPA's own scale-down window plus one drain: consolidation never runs ahead of a
    scale-down the HPA may still take back, nor of a drain still under way."""
    return f"{settings.scale_down_stabilization_seconds + settings.deregistration_delay_seconds}s"


def controller_policy(
    cluster_name: str,
    region: str,
    account: str,
    partition: str,
    node_role_arn: str,
    queue_arn: str,
) -> dict[str, Any]:
    """The controller's IAM policy: the getting-started template's six policies in one
    document (website/content/en/docs/getting-started/getting-started-with-karpenter/
    cloudformation.yaml at v1.14.1). Everything that creates, tags or deletes is scoped by
    the cluster's tags (`kubernetes.io/cluster/<name>: owned`, `eks:eks-cluster-name`) and
    Karpenter's own (`karpenter.sh/nodepool`, `karpenter.k8s.aws/ec2nodeclass`); `*` only
    for reads."""
    ec2 = f"arn:{partition}:ec2:{region}"
    owned = f"kubernetes.io/cluster/{cluster_name}"
    profile = f"arn:{partition}:iam::{account}:instance-profile/*"
    created = [
        f"{ec2}:*:{kind}/*"
        for kind in (
            "fleet",
            "instance",
            "volume",
            "network-interface",
            "launch-template",
            "spot-instances-request",
        )
    ]
    request_tags = {
        f"aws:RequestTag/{owned}": "owned",
        "aws:RequestTag/eks:eks-cluster-name": cluster_name,
    }
    resource_owned = {f"aws:ResourceTag/{owned}": "owned"}
    by_node_pool = {"aws:ResourceTag/karpenter.sh/nodepool": "*"}
    profile_owned = {**resource_owned, "aws:ResourceTag/topology.kubernetes.io/region": region}
    profile_request = {**request_tags, "aws:RequestTag/topology.kubernetes.io/region": region}
    statements: list[dict[str, Any]] = [
        {
            # What an instance is launched from (not created, not tagged by Karpenter).
            "Sid": "AllowScopedEC2InstanceAccessActions",
            "Effect": "Allow",
            "Resource": [
                f"{ec2}::image/*",
                f"{ec2}::snapshot/*",
                f"{ec2}:*:security-group/*",
                f"{ec2}:*:subnet/*",
                f"{ec2}:*:capacity-reservation/*",
                f"{ec2}:*:placement-group/*",
            ],
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
        },
        {
            "Sid": "AllowScopedEC2LaunchTemplateAccessActions",
            "Effect": "Allow",
            "Resource": f"{ec2}:*:launch-template/*",
            "Action": ["ec2:RunInstances", "ec2:CreateFleet"],
            "Condition": {"StringEquals": resource_owned, "StringLike": by_node_pool},
        },
        {
            "Sid": "AllowScopedEC2InstanceActionsWithTags",
            "Effect": "Allow",
            "Resource": created,
            "Action": ["ec2:RunInstances", "ec2:CreateFleet", "ec2:CreateLaunchTemplate"],
            "Condition": {
                "StringEquals": request_tags,
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedResourceCreationTagging",
            "Effect": "Allow",
            "Resource": created,
            "Action": "ec2:CreateTags",
            "Condition": {
                "StringEquals": {
                    **request_tags,
                    "ec2:CreateAction": ["RunInstances", "CreateFleet", "CreateLaunchTemplate"],
                },
                "StringLike": {"aws:RequestTag/karpenter.sh/nodepool": "*"},
            },
        },
        {
            "Sid": "AllowScopedResourceTagging",
            "Effect": "Allow",
            "Resource": f"{ec2}:*:instance/*",
            "Action": "ec2:CreateTags",
            "Condition": {
                "StringEquals": resource_owned,
                "StringLike": by_node_pool,
                "StringEqualsIfExists": {"aws:RequestTag/eks:eks-cluster-name": cluster_name},
                "ForAllValues:StringEquals": {
                    "aws:TagKeys": ["eks:eks-cluster-name", "karpenter.sh/nodeclaim", "Name"]
                },
            },
        },
        {
            "Sid": "AllowScopedDeletion",
            "Effect": "Allow",
            "Resource": [f"{ec2}:*:instance/*", f"{ec2}:*:launch-template/*"],
            "Action": ["ec2:TerminateInstances", "ec2:DeleteLaunchTemplate"],
            "Condition": {"StringEquals": resource_owned, "StringLike": by_node_pool},
        },
        {
            "Sid": "AllowPassingInstanceRole",
            "Effect": "Allow",
            "Resource": node_role_arn,
            "Action": "iam:PassRole",
            "Condition": {"StringEquals": {"iam:PassedToService": "ec2.amazonaws.com"}},
        },
        {
            "Sid": "AllowScopedInstanceProfileCreationActions",
            "Effect": "Allow",
            "Resource": profile,
            "Action": "iam:CreateInstanceProfile",
            "Condition": {
                "StringEquals": profile_request,
                "StringLike": {"aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
        },
        {
            "Sid": "AllowScopedInstanceProfileTagActions",
            "Effect": "Allow",
            "Resource": profile,
            "Action": "iam:TagInstanceProfile",
            "Condition": {
                "StringEquals": {**profile_owned, **profile_request},
                "StringLike": {
                    "aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*",
                    "aws:RequestTag/karpenter.k8s.aws/ec2nodeclass": "*",
                },
            },
        },
        {
            "Sid": "AllowScopedInstanceProfileActions",
            "Effect": "Allow",
            "Resource": profile,
            "Action": [
                "iam:AddRoleToInstanceProfile",
                "iam:RemoveRoleFromInstanceProfile",
                "iam:DeleteInstanceProfile",
            ],
            "Condition": {
                "StringEquals": profile_owned,
                "StringLike": {"aws:ResourceTag/karpenter.k8s.aws/ec2nodeclass": "*"},
            },
        },
        {
            "Sid": "AllowAPIServerEndpointDiscovery",
            "Effect": "Allow",
            "Resource": f"arn:{partition}:eks:{region}:{account}:cluster/{cluster_name}",
            "Action": "eks:DescribeCluster",
        },
        {
            # Karpenter stops launching into a zone an ARC zonal shift moved the cluster
            # away from; without this read it logs "cluster not registered to Zonal Shift"
            # and ignores shifts. Upstream scopes it by condition, not by resource.
            "Sid": "AllowZonalShiftStatusReadOnly",
            "Effect": "Allow",
            "Resource": "*",
            "Action": "arc-zonal-shift:GetManagedResource",
            "Condition": {
                "StringEquals": {
                    "arc-zonal-shift:ResourceIdentifier": (
                        f"arn:{partition}:eks:{region}:{account}:cluster/{cluster_name}"
                    )
                }
            },
        },
        {
            "Sid": "AllowInterruptionQueueActions",
            "Effect": "Allow",
            "Resource": queue_arn,
            "Action": ["sqs:DeleteMessage", "sqs:GetQueueUrl", "sqs:ReceiveMessage"],
        },
        {
            "Sid": "AllowRegionalReadActions",
            "Effect": "Allow",
            "Resource": "*",
            "Action": [
                "ec2:DescribeCapacityReservations",
                "ec2:DescribeImages",
                "ec2:DescribeInstances",
                "ec2:DescribeInstanceStatus",
                "ec2:DescribeInstanceTypeOfferings",
                "ec2:DescribeInstanceTypes",
                "ec2:DescribeLaunchTemplates",
                "ec2:DescribePlacementGroups",
                "ec2:DescribeSecurityGroups",
                "ec2:DescribeSpotPriceHistory",
                "ec2:DescribeSubnets",
            ],
            "Condition": {"StringEquals": {"aws:RequestedRegion": region}},
        },
        {
            "Sid": "AllowSSMReadActions",
            "Effect": "Allow",
            "Resource": f"arn:{partition}:ssm:{region}::parameter/aws/service/*",
            "Action": "ssm:GetParameter",
        },
        {
            "Sid": "AllowPricingReadActions",
            "Effect": "Allow",
            "Resource": "*",
            "Action": "pricing:GetProducts",
        },
        {
            "Sid": "AllowUnscopedInstanceProfileListAction",
            "Effect": "Allow",
            "Resource": "*",
            "Action": "iam:ListInstanceProfiles",
        },
        {
            "Sid": "AllowInstanceProfileReadActions",
            "Effect": "Allow",
            "Resource": profile,
            "Action": "iam:GetInstanceProfile",
        },
    ]
    return {"Version": "2012-10-17", "Statement": statements}


def queue_policy(queue_arn: str) -> dict[str, Any]:
    """EventBridge (and SQS itself) may send; nothing over plain HTTP."""
    return {
        "Version": "2012-10-17",
        "Id": "EC2InterruptionPolicy",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": ["events.amazonaws.com", "sqs.amazonaws.com"]},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
            },
            {
                "Sid": "DenyHTTP",
                "Effect": "Deny",
                "Principal": "*",
                "Action": "sqs:*",
                "Resource": queue_arn,
                "Condition": {"Bool": {"aws:SecureTransport": "false"}},
            },
        ],
    }


def karpenter_values(
    settings: RegionalConfig, role_arn: pulumi.Input[str], queue_name: pulumi.Input[str]
) -> dict[str, Any]:
    """The chart's values, each away from its default for a reason."""
    return {
        "settings": {
            "clusterName": settings.name,
            "interruptionQueue": queue_name,
            "featureGates": {
                # Not in v1.14.1: its core (sigs.k8s.io/karpenter 6e7eab7a0f48) has the
                # gates NodeRepair, ReservedCapacity, SpotToSpotConsolidation, NodeOverlay,
                # StaticCapacity, CapacityBuffer, and the chart renders FEATURE_GATES from
                # those six keys only, so this value renders nothing today. The proposed
                # controller (kubernetes-sigs/karpenter PR #2894) would rewrite
                # controller.kubernetes.io/pod-deletion-cost by its own node ranking,
                # erasing the iofleet autoscaler's per-connection ranking: set off ahead
                # of the release that adds it (policy karpenter-keeps-pod-deletion-cost).
                "podDeletionCostManagement": False,
            },
        },
        "serviceAccount": {
            "name": KARPENTER_SA,
            "annotations": {"eks.amazonaws.com/role-arn": role_arn},
        },
        # The controller must never run on a node it manages (it could consolidate its
        # own node away): on the managed node group only.
        "nodeSelector": {"kubernetes.io/os": "linux", **MANAGED_POOL_LABEL},
        "affinity": {
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [
                        {
                            "matchExpressions": [
                                {"key": "karpenter.sh/nodepool", "operator": "DoesNotExist"}
                            ]
                        }
                    ]
                }
            },
            "podAntiAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": [
                    {"topologyKey": "kubernetes.io/hostname"}
                ]
            },
        },
        "controller": {
            # The chart leaves resources empty; a controller starved of CPU batches late.
            "resources": {
                "requests": {"cpu": "500m", "memory": "512Mi"},
                "limits": {"memory": "1Gi"},
            }
        },
    }


def node_pool_spec(settings: RegionalConfig) -> dict[str, Any]:
    return {
        "template": {
            "metadata": {"labels": KARPENTER_POOL_LABEL},
            "spec": {
                "nodeClassRef": {
                    "group": "karpenter.k8s.aws",
                    "kind": "EC2NodeClass",
                    "name": NODE_CLASS,
                },
                "requirements": [
                    {"key": "kubernetes.io/arch", "operator": "In", "values": ["amd64"]},
                    {"key": "kubernetes.io/os", "operator": "In", "values": ["linux"]},
                    # On-demand: a Spot reclaim gives two minutes, shorter than a drain.
                    {
                        "key": "karpenter.sh/capacity-type",
                        "operator": "In",
                        "values": ["on-demand"],
                    },
                    # The types `iofleet plan` sized pods-per-node for.
                    {
                        "key": "node.kubernetes.io/instance-type",
                        "operator": "In",
                        "values": list(settings.node_instance_types),
                    },
                ],
                "expireAfter": NODE_EXPIRY,
                "terminationGracePeriod": NODE_DRAIN_LIMIT,
            },
        },
        "disruption": {
            # Balanced weighs a consolidation's saving against its pods' disruption cost,
            # which reads the autoscaler's pod-deletion-cost: a node holding many
            # connections costs more to empty than an idle one, so the emptiest nodes go
            # first and a full node only for a saving that outweighs its reconnects.
            "consolidationPolicy": "Balanced",
            "consolidateAfter": consolidate_after(settings),
            # One node at a time (the PDB lets one server pod drain at a time anyway);
            # budgets count nodes already being deleted, so while one node drains no
            # other is disrupted voluntarily.
            "budgets": [{"nodes": "1"}],
        },
        # A cost cap: the NodePool never runs more than this many vCPUs.
        "limits": {"cpu": str(settings.node_pool_cpu_limit)},
    }


@dataclass
class NodeAutoscalerArgs:
    settings: RegionalConfig
    cluster: Cluster
    private_subnet_ids: list[pulumi.Output[str]]
    tags: dict[str, str]


class NodeAutoscaler(pulumi.ComponentResource):
    """Karpenter: controller (Helm, IRSA) on the managed node group, its interruption
    queue and rules, the node role with its EKS access entry, a NodePool and an
    EC2NodeClass in the cluster's private subnets and security group."""

    def __init__(
        self, name: str, args: NodeAutoscalerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:node_autoscaling:NodeAutoscaler", name, None, opts)
        self._name = name
        self._args = args
        child = pulumi.ResourceOptions(parent=self)
        s = args.settings
        self.node_role = self._create_node_role()
        access = aws.eks.AccessEntry(
            f"{name}-nodes",
            cluster_name=args.cluster.name,
            principal_arn=self.node_role.arn,
            # EC2_LINUX: EKS maps the role to system:nodes so its instances can join.
            type="EC2_LINUX",
            tags=args.tags,
            opts=child,
        )
        self.queue = aws.sqs.Queue(
            f"{name}-interruption",
            name=s.name,
            message_retention_seconds=300,
            sqs_managed_sse_enabled=True,
            tags=args.tags,
            opts=child,
        )
        aws.sqs.QueuePolicy(
            f"{name}-interruption",
            queue_url=self.queue.url,
            policy=self.queue.arn.apply(lambda arn: json.dumps(queue_policy(arn))),
            opts=child,
        )
        for key, (source, detail) in INTERRUPTION_EVENTS.items():
            rule = aws.cloudwatch.EventRule(
                f"{name}-{key}",
                event_pattern=json.dumps({"source": [source], "detail-type": [detail]}),
                tags=args.tags,
                opts=child,
            )
            aws.cloudwatch.EventTarget(
                f"{name}-{key}",
                rule=rule.name,
                target_id="KarpenterInterruptionQueueTarget",
                arn=self.queue.arn,
                opts=child,
            )
        role = args.cluster.irsa_role(
            f"{name}-controller", KARPENTER_NAMESPACE, KARPENTER_SA, self._policy()
        )
        chart, version = KARPENTER_CHART
        self.release = k8s.helm.v3.Release(
            f"{name}-karpenter",
            name="karpenter",
            chart=chart,
            version=version,
            namespace=KARPENTER_NAMESPACE,
            values=karpenter_values(s, role.arn, self.queue.name),
            # The chart installs its CRDs (crds/) before anything of ours uses them.
            atomic=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=args.cluster.provider,
                # `atomic` waits on the controller's pods: they need the managed nodes.
                depends_on=[*args.cluster.ready, access],
            ),
        )
        custom = pulumi.ResourceOptions(
            parent=self, provider=args.cluster.provider, depends_on=[self.release]
        )
        k8s.apiextensions.CustomResource(
            f"{name}-node-class",
            api_version="karpenter.k8s.aws/v1",
            kind="EC2NodeClass",
            metadata={"name": NODE_CLASS, "labels": {"app.kubernetes.io/part-of": "iofleet"}},
            spec=self._node_class_spec(),
            opts=custom,
        )
        k8s.apiextensions.CustomResource(
            f"{name}-node-pool",
            api_version="karpenter.sh/v1",
            kind="NodePool",
            metadata={"name": NODE_POOL, "labels": {"app.kubernetes.io/part-of": "iofleet"}},
            spec=node_pool_spec(s),
            opts=custom,
        )
        self.register_outputs({"node_role_arn": self.node_role.arn})

    def _create_node_role(self) -> aws.iam.Role:
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{self._name}-nodes",
            assume_role_policy=_assume_role("ec2.amazonaws.com"),
            tags=self._args.tags,
            opts=child,
        )
        for arn in NODE_POLICIES:
            aws.iam.RolePolicyAttachment(
                f"{self._name}-nodes-{arn.rsplit('/', 1)[-1]}",
                role=role.name,
                policy_arn=arn,
                opts=child,
            )
        return role

    def _policy(self) -> pulumi.Output[str]:
        identity = aws.get_caller_identity_output()
        partition = aws.get_partition_output()
        s = self._args.settings

        def render(values: list[str]) -> str:
            account, part, role_arn, queue_arn = values
            document = controller_policy(s.name, s.region, account, part, role_arn, queue_arn)
            # Compact: an inline role policy is capped at 10,240 characters.
            return json.dumps(document, separators=(",", ":"))

        return pulumi.Output.all(
            identity.account_id, partition.partition, self.node_role.arn, self.queue.arn
        ).apply(render)

    def _node_class_spec(self) -> dict[str, Any]:
        args = self._args
        return {
            "role": self.node_role.name,
            "amiSelectorTerms": [{"alias": args.settings.node_ami_alias}],
            # By id, not by discovery tags: exactly the program's private subnets and the
            # EKS cluster security group (which Redis admits), nothing tagged elsewhere.
            "subnetSelectorTerms": [{"id": subnet} for subnet in args.private_subnet_ids],
            "securityGroupSelectorTerms": [{"id": args.cluster.node_security_group_id}],
            # IMDSv2 only, one hop: pods cannot borrow the node role's credentials.
            "metadataOptions": {
                "httpEndpoint": "enabled",
                "httpProtocolIPv6": "disabled",
                "httpPutResponseHopLimit": 1,
                "httpTokens": "required",
            },
            "tags": args.tags,
        }


@dataclass
class HeadroomArgs:
    settings: RegionalConfig
    provider: k8s.Provider
    namespace: str
    depends_on: list[pulumi.Resource]


class Headroom(pulumi.ComponentResource):
    """`headroom_pods` placeholder pods the size of a server pod, below the server's
    priority: a load step's new server pods preempt them and start in seconds on warm
    nodes, while the evicted placeholders go Pending and make Karpenter add the node the
    next step will need (45-90 s, in the background)."""

    def __init__(
        self, name: str, args: HeadroomArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:node_autoscaling:Headroom", name, None, opts)
        s = args.settings
        opts_k8s = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        priority = k8s.scheduling.v1.PriorityClass(
            f"{name}-priority",
            metadata={"name": HEADROOM, "labels": HEADROOM_LABELS},
            value=HEADROOM_PRIORITY,
            global_default=False,
            # Placeholders wait for room; they never preempt anything themselves.
            preemption_policy="Never",
            description="iofleet warm headroom: placeholders that server pods preempt.",
            opts=opts_k8s,
        )
        container = {
            "name": "placeholder",
            "image": PAUSE_IMAGE,
            # Exactly one server pod's request: one placeholder holds room for one pod.
            "resources": {
                "requests": {"cpu": s.server_cpu, "memory": s.server_memory},
                "limits": {"memory": s.server_memory},
            },
            "securityContext": RESTRICTED_CONTAINER,
        }
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata={
                **meta(HEADROOM, args.namespace, HEADROOM_LABELS),
                # Pending placeholders are the point while nodes come up: do not wait on
                # them being Ready (pulumi-kubernetes' Deployment await).
                "annotations": {"pulumi.com/skipAwait": "true"},
            },
            spec={
                "replicas": s.headroom_pods,
                "selector": {"matchLabels": HEADROOM_LABELS},
                "template": {
                    "metadata": {"labels": HEADROOM_LABELS},
                    "spec": {
                        "priorityClassName": HEADROOM,
                        # Preempted at once: nothing to drain in a pause container.
                        "terminationGracePeriodSeconds": 0,
                        "automountServiceAccountToken": False,
                        "securityContext": RESTRICTED_POD,
                        # Spread like the servers (zone first), so the room is where a
                        # zone-spread server pod may be placed.
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "topology.kubernetes.io/zone",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": HEADROOM_LABELS},
                            }
                        ],
                        "containers": [container],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(
                opts_k8s, pulumi.ResourceOptions(depends_on=[priority])
            ),
        )
        self.register_outputs({"pods": s.headroom_pods})
