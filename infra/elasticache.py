"""RedisCache: the ElastiCache replication group the servers fan out through."""

from __future__ import annotations

from dataclasses import dataclass

import pulumi
import pulumi_aws as aws
import pulumi_random as random

PORT = 6379

# Pub/sub output buffers: a server pod that falls behind on a burst of room traffic is
# disconnected by Redis once its buffer passes the hard limit, and then misses messages
# until it resubscribes. The defaults (32 MB hard, 8 MB for 60 s soft) are sized for
# a few chatty clients; a fan-out bus with many nodes needs headroom.
PARAMETERS = {
    "client-output-buffer-limit-pubsub-hard-limit": "268435456",
    "client-output-buffer-limit-pubsub-soft-limit": "67108864",
    "client-output-buffer-limit-pubsub-soft-seconds": "60",
    # Detect dead server pods (and free their subscriptions) within a minute.
    "tcp-keepalive": "60",
}


@dataclass
class RedisCacheArgs:
    vpc_id: pulumi.Input[str]
    subnet_ids: list[pulumi.Output[str]]
    """Private subnets, one per AZ, so replicas land in different AZs."""
    client_security_group_id: pulumi.Input[str]
    """The only security group allowed in: the cluster's nodes."""
    replication_group_id: str
    node_type: str
    replicas: int
    engine_version: str
    snapshot_retention_days: int
    tags: dict[str, str]
    engine: str = "redis"
    """redis (Redis OSS) or valkey."""


def parameter_group_family(engine: str, version: str) -> str:
    """ElastiCache's family names: redis6.x for every Redis OSS 6 version, redis7, and
    valkey7 / valkey8 (ElastiCache user guide, "Parameter groups")."""
    major = version.split(".", maxsplit=1)[0]
    if engine == "redis" and major == "6":
        return "redis6.x"
    return f"{engine}{major}"


class RedisCache(pulumi.ComponentResource):
    """Cluster-mode-disabled replication group, Multi-AZ, TLS, auth token, encrypted."""

    primary_endpoint: pulumi.Output[str]
    auth_token: pulumi.Output[str]
    url: pulumi.Output[str]
    """``rediss://:<token>@<primary>:6379/0``, a secret."""
    member_cluster_ids: list[str]
    replication_group: aws.elasticache.ReplicationGroup

    def __init__(
        self, name: str, args: RedisCacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:redis:RedisCache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # ElastiCache tokens allow 16-128 printable characters; letters and digits only
        # keep the token safe inside a URL without escaping.
        token = random.RandomPassword(f"{name}-auth-token", length=64, special=False, opts=child)
        group = self._create_security_group(name, args)
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-subnets",
            description="iofleet Redis private subnets",
            subnet_ids=args.subnet_ids,
            tags=args.tags,
            opts=child,
        )
        params = aws.elasticache.ParameterGroup(
            f"{name}-params",
            family=parameter_group_family(args.engine, args.engine_version),
            description="iofleet pub/sub tuning",
            parameters=[{"name": k, "value": v} for k, v in PARAMETERS.items()],
            tags=args.tags,
            opts=child,
        )
        self.replication_group = aws.elasticache.ReplicationGroup(
            f"{name}-group",
            replication_group_id=args.replication_group_id,
            description="iofleet Socket.IO fan-out (pub/sub)",
            engine=args.engine,
            engine_version=args.engine_version,
            node_type=args.node_type,
            port=PORT,
            # AWS advises cluster mode disabled for pub/sub: in cluster mode every
            # PUBLISH is broadcast over the cluster bus to every shard.
            cluster_mode="disabled",
            num_cache_clusters=1 + args.replicas,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=token.result,
            auth_token_update_strategy="ROTATE",
            at_rest_encryption_enabled=True,
            parameter_group_name=params.name,
            subnet_group_name=subnets.name,
            security_group_ids=[group.id],
            snapshot_retention_limit=args.snapshot_retention_days,
            snapshot_window="03:00-04:00",
            maintenance_window="sun:05:00-sun:06:00",
            auto_minor_version_upgrade=True,
            apply_immediately=False,
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self, additional_secret_outputs=["authToken"]),
        )
        self.primary_endpoint = self.replication_group.primary_endpoint_address
        self.auth_token = pulumi.Output.secret(token.result)
        self.url = pulumi.Output.secret(
            pulumi.Output.concat(
                "rediss://:", token.result, "@", self.primary_endpoint, f":{PORT}/0"
            )
        )
        # ElastiCache names member clusters <group id>-001, -002, ...; the alarms key on them.
        self.member_cluster_ids = [
            f"{args.replication_group_id}-{i:03d}" for i in range(1, args.replicas + 2)
        ]
        self.register_outputs({"primary_endpoint": self.primary_endpoint})

    def _create_security_group(self, name: str, args: RedisCacheArgs) -> aws.ec2.SecurityGroup:
        return aws.ec2.SecurityGroup(
            f"{name}-sg",
            description="iofleet Redis: TLS port from the EKS nodes only",
            vpc_id=args.vpc_id,
            ingress=[
                {
                    "protocol": "tcp",
                    "from_port": PORT,
                    "to_port": PORT,
                    "security_groups": [args.client_security_group_id],
                    "description": "EKS nodes and pods",
                }
            ],
            # Redis never opens connections; no egress rule.
            egress=[],
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
