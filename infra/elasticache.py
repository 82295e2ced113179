"""RedisCache: the ElastiCache replication group the servers fan out through.

Two shapes (`redis_mode`): one primary with replicas (cluster mode disabled; the server's
URL is ``rediss://``) or a Redis Cluster of `shards` primaries with replicas each (cluster
mode enabled; ``rediss+cluster://``, the fan-out on sharded pub/sub). ElastiCache turns
one into the other only through a "compatible" phase the server's URL cannot follow, so
each shape is its own group (its own Pulumi name and group id): switching creates the
new group, moves the Secret (a rolling restart) and deletes the old one.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

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
# A cluster-mode group needs a parameter group that says so (AWS refuses one without).
CLUSTER_PARAMETERS = {**PARAMETERS, "cluster-enabled": "yes"}


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
    mode: str = "replication"
    """replication (cluster mode disabled) or cluster (cluster mode enabled)."""
    shards: int = 1
    """Primaries (node groups) in cluster mode; `replicas` is then per shard."""
    auth_rotation: int = 0
    """The stack's `redis_auth_rotation` step (auth_token_generation, auth_update_strategy)."""


def parameter_group_family(engine: str, version: str) -> str:
    """ElastiCache's family names: redis6.x for every Redis OSS 6 version, redis7, and
    valkey7 / valkey8 (ElastiCache user guide, "Parameter groups")."""
    major = version.split(".", maxsplit=1)[0]
    if engine == "redis" and major == "6":
        return "redis6.x"
    return f"{engine}{major}"


def auth_token_generation(step: int) -> int:
    """Which AUTH token a rotation step uses: steps 2k-1 and 2k share token k (step 0:
    the first one)."""
    return (step + 1) // 2


def auth_update_strategy(step: int) -> str:
    """ElastiCache's AuthTokenUpdateStrategy for a rotation step. An odd step brings a new
    token with ROTATE: the group accepts old and new, so pods still on the old one keep
    working while the rollout replaces them; the next (even) step sends the same token
    with SET, which drops the old one. Step 0 (the create) ignores it: ROTATE, as before."""
    return "SET" if step and step % 2 == 0 else "ROTATE"


def member_ids(group_id: str, mode: str, shards: int, replicas: int) -> list[str]:
    """ElastiCache's node ids (CacheClusterId, what the alarms key on): <group>-001, -002
    ... with cluster mode disabled; <group>-<shard 0001..>-<node 001..> with it enabled."""
    if mode == "cluster":
        return [
            f"{group_id}-{shard:04d}-{node:03d}"
            for shard in range(1, shards + 1)
            for node in range(1, replicas + 2)
        ]
    return [f"{group_id}-{i:03d}" for i in range(1, replicas + 2)]


class RedisCache(pulumi.ComponentResource):
    """A Multi-AZ replication group, TLS, auth token, encrypted; cluster mode per `mode`."""

    endpoint: pulumi.Output[str]
    """What the servers connect to: the primary endpoint (replication) or the
    configuration endpoint (cluster)."""
    primary_endpoint: pulumi.Output[str]
    auth_token: pulumi.Output[str]
    url: pulumi.Output[str]
    """``rediss://:<token>@<primary>:6379/0`` or ``rediss+cluster://:<token>@<configuration
    endpoint>:6379``, a secret."""
    member_cluster_ids: list[str]
    replication_group: aws.elasticache.ReplicationGroup

    def __init__(
        self, name: str, args: RedisCacheArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:redis:RedisCache", name, None, opts)
        child = pulumi.ResourceOptions(parent=self)
        # ElastiCache tokens allow 16-128 printable characters; letters and digits only
        # keep the token safe inside a URL without escaping.
        # A new generation replaces the password (keepers force a new one); generation 0
        # has no keepers, so stacks made before rotation existed keep their token.
        generation = auth_token_generation(args.auth_rotation)
        token = random.RandomPassword(
            f"{name}-auth-token",
            length=64,
            special=False,
            keepers={"generation": str(generation)} if generation else None,
            opts=child,
        )
        cluster = args.mode == "cluster"
        # Each shape its own resources (module docstring): a parameter group's
        # cluster-enabled cannot change, nor a group's mode in one step.
        shape = "-cluster" if cluster else ""
        group = self._create_security_group(name, args)
        subnets = aws.elasticache.SubnetGroup(
            f"{name}-subnets",
            description="iofleet Redis private subnets",
            subnet_ids=args.subnet_ids,
            tags=args.tags,
            opts=child,
        )
        params = aws.elasticache.ParameterGroup(
            f"{name}{shape}-params",
            family=parameter_group_family(args.engine, args.engine_version),
            description="iofleet pub/sub tuning" + (", cluster mode" if cluster else ""),
            parameters=[
                {"name": k, "value": v}
                for k, v in (CLUSTER_PARAMETERS if cluster else PARAMETERS).items()
            ],
            tags=args.tags,
            opts=child,
        )
        group_id = f"{args.replication_group_id}-c" if cluster else args.replication_group_id
        if cluster:
            # In cluster mode a plain PUBLISH crosses the cluster bus to every shard; the
            # server publishes with SPUBLISH, which stays on the shard owning the room's
            # channel, so the load divides by the shards (iofleet plan sizes them).
            sizing: dict[str, Any] = {
                "cluster_mode": "enabled",
                "num_node_groups": args.shards,
                "replicas_per_node_group": args.replicas,
            }
        else:
            # One primary: every node's subscription and every PUBLISH on it.
            sizing = {"cluster_mode": "disabled", "num_cache_clusters": 1 + args.replicas}
        self.replication_group = aws.elasticache.ReplicationGroup(
            f"{name}{shape}-group",
            replication_group_id=group_id,
            description="iofleet Socket.IO fan-out (pub/sub)",
            engine=args.engine,
            engine_version=args.engine_version,
            node_type=args.node_type,
            port=PORT,
            **sizing,
            automatic_failover_enabled=True,
            multi_az_enabled=True,
            transit_encryption_enabled=True,
            transit_encryption_mode="required",
            auth_token=token.result,
            # Sent only when the token or the strategy changes (docs/infra.md, "Rotating
            # the Redis AUTH token"); the provider applies that modification immediately,
            # whatever apply_immediately says below.
            auth_token_update_strategy=auth_update_strategy(args.auth_rotation),
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
        self.endpoint = (
            self.replication_group.configuration_endpoint_address
            if cluster
            else self.primary_endpoint
        )
        self.auth_token = pulumi.Output.secret(token.result)
        # The endpoint is an output of the group, so the URL (and the Secret, and the pods'
        # rollout) waits until the group has taken a new token: no pod starts with a
        # token Redis does not accept yet.
        self.url = pulumi.Output.secret(
            pulumi.Output.concat(
                "rediss+cluster://:" if cluster else "rediss://:",
                token.result,
                "@",
                self.endpoint,
                f":{PORT}" if cluster else f":{PORT}/0",
            )
        )
        self.member_cluster_ids = member_ids(group_id, args.mode, args.shards, args.replicas)
        self.register_outputs({"endpoint": self.endpoint})

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
