"""Cluster: EKS control plane, a managed node group across the AZs, OIDC for IRSA and
the Kubernetes provider every workload uses."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import AwsAccess

ADMIN_POLICY = "arn:aws:eks::aws:cluster-access-policy/AmazonEKSClusterAdminPolicy"
CONTROL_PLANE_LOG_DAYS = 90
"""api/audit/authenticator logs kept for 90 days (a quarter of audit history)."""
NODE_POLICIES = (
    "arn:aws:iam::aws:policy/AmazonEKSWorkerNodePolicy",
    "arn:aws:iam::aws:policy/AmazonEKS_CNI_Policy",
    # Pull, nothing more (ReadOnly also lists and describes every repository): what the
    # EKS node IAM role page names (docs.aws.amazon.com/eks/latest/userguide/create-node-role).
    "arn:aws:iam::aws:policy/AmazonEC2ContainerRegistryPullOnly",
)


@dataclass
class ClusterArgs:
    cluster_name: str
    version: str
    region: str
    private_subnet_ids: list[pulumi.Output[str]]
    public_subnet_ids: list[pulumi.Output[str]]
    public_access_cidrs: list[str]
    instance_types: list[str]
    node_min: int
    node_desired: int
    node_max: int
    admin_arns: list[str]
    """IAM principals given cluster admin (EKS access entries), besides the creator."""
    aws_access: AwsAccess
    """Who the stack is (aws:profile / aws:assumeRoles): the kubeconfig asks as them."""
    tags: dict[str, str]


def _assume_role(service: str) -> str:
    return json.dumps(
        {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": service},
                    "Action": ["sts:AssumeRole", "sts:TagSession"],
                }
            ],
        }
    )


def _running_principal() -> str:
    """The IAM role or user this `up` runs as: for an assumed role, the role's ARN (what
    an access entry names), not the sts session's."""
    caller = aws.get_caller_identity()
    return str(aws.iam.get_session_context(arn=caller.arn).issuer_arn)


class Cluster(pulumi.ComponentResource):
    """EKS with secrets envelope encryption, control-plane logs, a managed node group in
    the private subnets and an IAM OIDC provider so service accounts can assume roles."""

    name: pulumi.Output[str]
    node_security_group_id: pulumi.Output[str]
    oidc_provider_arn: pulumi.Output[str]
    oidc_issuer: pulumi.Output[str]
    kubeconfig: pulumi.Output[str]
    provider: k8s.Provider
    ready: list[pulumi.Resource]
    """What a pod needs before it can schedule and get an IP: the node group and the
    VPC CNI add-on. Helm releases with `atomic` wait on their pods, so they depend on it."""

    def __init__(
        self, name: str, args: ClusterArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:cluster:Cluster", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        self._name = name
        self._args = args
        role = aws.iam.Role(
            f"{name}-control-plane",
            assume_role_policy=_assume_role("eks.amazonaws.com"),
            tags=args.tags,
            opts=child,
        )
        attach = aws.iam.RolePolicyAttachment(
            f"{name}-control-plane",
            role=role.name,
            policy_arn="arn:aws:iam::aws:policy/AmazonEKSClusterPolicy",
            opts=child,
        )
        key = aws.kms.Key(
            f"{name}-secrets",
            description=f"{args.cluster_name} Kubernetes secrets envelope encryption",
            enable_key_rotation=True,
            tags=args.tags,
            opts=child,
        )
        # EKS writes control-plane logs to this group; made first, so they expire
        # instead of accumulating forever (EKS would create it without retention).
        logs = aws.cloudwatch.LogGroup(
            f"{name}-logs",
            name=f"/aws/eks/{args.cluster_name}/cluster",
            retention_in_days=CONTROL_PLANE_LOG_DAYS,
            tags=args.tags,
            opts=child,
        )
        self._eks = aws.eks.Cluster(
            f"{name}-eks",
            name=args.cluster_name,
            version=args.version,
            role_arn=role.arn,
            vpc_config={
                "subnet_ids": [*args.private_subnet_ids, *args.public_subnet_ids],
                "endpoint_private_access": True,
                "endpoint_public_access": True,
                "public_access_cidrs": args.public_access_cidrs,
            },
            access_config={
                "authentication_mode": "API_AND_CONFIG_MAP",
                "bootstrap_cluster_creator_admin_permissions": True,
            },
            encryption_config={"provider": {"key_arn": key.arn}, "resources": ["secrets"]},
            enabled_cluster_log_types=["api", "audit", "authenticator"],
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, depends_on=[attach, logs]),
        )
        self.name = self._eks.name
        # Managed node groups without a launch template use the EKS-created cluster
        # security group; Redis admits exactly that group.
        self.node_security_group_id = self._eks.vpc_config.cluster_security_group_id
        node_group = self._create_node_group()
        self._create_access_entries()
        vpc_cni = aws.eks.Addon(
            f"{name}-vpc-cni",
            cluster_name=self._eks.name,
            addon_name="vpc-cni",
            # Without the CNI's network policy agent, NetworkPolicy objects (the admin
            # port's only-from-autoscaler-and-Prometheus rule) are accepted and ignored.
            configuration_values=json.dumps({"enableNetworkPolicy": "true"}),
            resolve_conflicts_on_create="OVERWRITE",
            resolve_conflicts_on_update="OVERWRITE",
            tags=args.tags,
            opts=child,
        )
        self.ready = [node_group, vpc_cni]
        issuer = self._eks.identities[0].oidcs[0].issuer
        oidc = aws.iam.OpenIdConnectProvider(
            f"{name}-oidc",
            url=issuer,
            client_id_lists=["sts.amazonaws.com"],
            # IAM trusts EKS issuers through its own root CAs; no thumbprint is pinned.
            tags=args.tags,
            opts=child,
        )
        self.oidc_provider_arn = oidc.arn
        self.oidc_issuer = issuer
        self.kubeconfig = pulumi.Output.secret(self._kubeconfig())
        self.provider = k8s.Provider(
            f"{name}-k8s",
            kubeconfig=self.kubeconfig,
            # Field managers make drift from kubectl edits visible instead of silent.
            enable_server_side_apply=True,
            opts=child,
        )
        self.register_outputs({"name": self.name, "oidc_provider_arn": self.oidc_provider_arn})

    def _create_access_entries(self) -> None:
        """Cluster admin for each configured principal, so teammates and CI (other roles
        than whoever ran the first `up`) can use kubectl and run later updates. Not for
        the principal running this `up`: EKS bootstraps its entry
        (bootstrap_cluster_creator_admin_permissions), and a second one for the same
        principal fails with 409 ResourceInUseException."""
        running = _running_principal()
        for index, arn in enumerate(self._args.admin_arns):
            if arn == running:
                continue
            entry = aws.eks.AccessEntry(
                f"{self._name}-admin-{index}",
                cluster_name=self._eks.name,
                principal_arn=arn,
                type="STANDARD",
                tags=self._args.tags,
                opts=pulumi.ResourceOptions(parent=self),
            )
            aws.eks.AccessPolicyAssociation(
                f"{self._name}-admin-{index}",
                cluster_name=self._eks.name,
                principal_arn=entry.principal_arn,
                policy_arn=ADMIN_POLICY,
                access_scope={"type": "cluster"},
                opts=pulumi.ResourceOptions(parent=self),
            )

    def _create_node_group(self) -> aws.eks.NodeGroup:
        args = self._args
        child = pulumi.ResourceOptions(parent=self)
        role = aws.iam.Role(
            f"{self._name}-nodes",
            assume_role_policy=_assume_role("ec2.amazonaws.com"),
            tags=args.tags,
            opts=child,
        )
        attachments = [
            aws.iam.RolePolicyAttachment(
                f"{self._name}-nodes-{arn.rsplit('/', 1)[-1]}",
                role=role.name,
                policy_arn=arn,
                opts=child,
            )
            for arn in NODE_POLICIES
        ]
        return aws.eks.NodeGroup(
            f"{self._name}-nodes",
            cluster_name=self._eks.name,
            # The nodes follow the control plane's minor version: raising
            # cluster_version upgrades the control plane first, then this group.
            version=self._eks.version,
            node_role_arn=role.arn,
            # Private subnets of every AZ: the server's zone spread needs nodes in each.
            subnet_ids=args.private_subnet_ids,
            instance_types=args.instance_types,
            ami_type="AL2023_x86_64_STANDARD",
            capacity_type="ON_DEMAND",
            scaling_config={
                "min_size": args.node_min,
                "desired_size": args.node_desired,
                "max_size": args.node_max,
            },
            update_config={"max_unavailable": 1},
            labels={"iofleet.io/pool": "default"},
            tags=args.tags,
            opts=pulumi.ResourceOptions(
                parent=self,
                depends_on=attachments,
                # A cluster autoscaler owns the live size once the group exists.
                ignore_changes=["scalingConfig.desiredSize"],
            ),
        )

    def _kubeconfig(self) -> pulumi.Output[str]:
        """A kubeconfig that gets short-lived tokens from `aws eks get-token`."""

        access = self._args.aws_access
        # The same identity the stack's provider assumes (aws:assumeRoles), so Kubernetes
        # sees whoever AWS sees.
        role_args = ["--role-arn", access.role_arn] if access.role_arn else []
        exec_env = [{"name": "AWS_PROFILE", "value": access.profile}] if access.profile else []

        def build(values: list[str]) -> str:
            name, endpoint, ca = values
            user: dict[str, object] = {
                "apiVersion": "client.authentication.k8s.io/v1beta1",
                "command": "aws",
                "args": [
                    "eks",
                    "get-token",
                    "--cluster-name",
                    name,
                    "--region",
                    self._args.region,
                    *role_args,
                ],
            }
            if exec_env:
                user["env"] = exec_env
            return json.dumps(
                {
                    "apiVersion": "v1",
                    "kind": "Config",
                    "clusters": [
                        {
                            "name": name,
                            "cluster": {"server": endpoint, "certificate-authority-data": ca},
                        }
                    ],
                    "contexts": [{"name": name, "context": {"cluster": name, "user": name}}],
                    "current-context": name,
                    "users": [{"name": name, "user": {"exec": user}}],
                }
            )

        return pulumi.Output.all(
            self._eks.name, self._eks.endpoint, self._eks.certificate_authority.data
        ).apply(build)

    def irsa_role(
        self, name: str, namespace: str, service_account: str, policy: pulumi.Input[str]
    ) -> aws.iam.Role:
        """An IAM role only the given service account can assume (IRSA)."""

        def trust(values: list[str]) -> str:
            arn, issuer = values
            host = issuer.removeprefix("https://")
            return json.dumps(
                {
                    "Version": "2012-10-17",
                    "Statement": [
                        {
                            "Effect": "Allow",
                            "Principal": {"Federated": arn},
                            "Action": "sts:AssumeRoleWithWebIdentity",
                            "Condition": {
                                "StringEquals": {
                                    f"{host}:sub": f"system:serviceaccount:{namespace}:"
                                    f"{service_account}",
                                    f"{host}:aud": "sts.amazonaws.com",
                                }
                            },
                        }
                    ],
                }
            )

        role = aws.iam.Role(
            name,
            assume_role_policy=pulumi.Output.all(self.oidc_provider_arn, self.oidc_issuer).apply(
                trust
            ),
            tags=self._args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.iam.RolePolicy(
            name, role=role.id, policy=policy, opts=pulumi.ResourceOptions(parent=self)
        )
        return role
