"""The inter-region link (docs/regions.md): the network between regional VPCs, and
each region's relay.

- `RegionPeering` (the global stack): a VPC peering connection between every pair
  of regional VPCs (requested from one region, accepted in the other), a route to
  the far VPC's CIDR in each private route table, and on each side's Redis
  security group one ingress rule: the Redis port, from the far VPC's CIDR. That
  port is all a relay needs (it publishes into the far Redis, and listens there
  for the far region's interest); nothing else crosses.
- `Relay` (each regional stack): the relay Deployment (`python -m relay`, the
  server's image), 2 replicas of which one forwards (a lease in its region's
  Redis), a PodDisruptionBudget keeping one, and a Secret holding its own Redis
  URL and the far regions' (endpoint and AUTH token), read from the far stacks'
  secret outputs and never written as a plain value. `IOFLEET_RELAY_REQUIRE_TLS`
  is on: the relay refuses a far Redis without TLS (and the policy pack refuses a
  relay without the setting, `relay-far-redis-over-tls`).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import combinations
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.config import AwsAccess, RegionalConfig
from infra.workloads import RESTRICTED_CONTAINER, RESTRICTED_POD, content_sha, meta

RELAY = "iofleet-relay"
RELAY_LABELS = {"app.kubernetes.io/name": RELAY, "app.kubernetes.io/part-of": "iofleet"}
RELAY_ADMIN_PORT = 9100
REDIS_PORT = 6379


@dataclass(frozen=True)
class PeerNetwork:
    """What the global stack reads of one regional stack to peer it."""

    key: str
    """The regional stack's short name (physical names)."""
    region: pulumi.Output[str]
    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    private_route_table_ids: pulumi.Output[list[str]]
    redis_security_group_id: pulumi.Output[str]


@dataclass
class RegionPeeringArgs:
    networks: list[PeerNetwork]
    aws_access: AwsAccess
    tags: dict[str, str] = field(default_factory=dict)


class RegionPeering(pulumi.ComponentResource):
    """VPC peering between every pair of regional VPCs, routes, and the Redis port."""

    connection_ids: list[pulumi.Output[str]]

    def __init__(
        self, name: str, args: RegionPeeringArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:region_link:RegionPeering", name, None, opts)
        self._args = args
        # One provider per regional stack, in its region (an output of that stack).
        providers = {net.key: self._provider_for(name, net) for net in args.networks}
        self.connection_ids = []
        for near, far in combinations(args.networks, 2):
            pair = f"{name}-{near.key}-{far.key}"
            peering = aws.ec2.VpcPeeringConnection(
                pair,
                vpc_id=near.vpc_id,
                peer_vpc_id=far.vpc_id,
                peer_region=far.region,
                # Cross-region peering is accepted on the far side (auto_accept only
                # works within one region).
                auto_accept=False,
                tags={**args.tags, "Name": pair},
                opts=pulumi.ResourceOptions(parent=self, provider=providers[near.key]),
            )
            accepter = aws.ec2.VpcPeeringConnectionAccepter(
                f"{pair}-accept",
                vpc_peering_connection_id=peering.id,
                auto_accept=True,
                tags={**args.tags, "Name": pair},
                opts=pulumi.ResourceOptions(parent=self, provider=providers[far.key]),
            )
            for side, other in ((near, far), (far, near)):
                self._create_side(pair, side, other, peering.id, providers[side.key], accepter)
            self.connection_ids.append(peering.id)
        self.register_outputs({"connection_ids": self.connection_ids})

    def _provider_for(self, name: str, network: PeerNetwork) -> aws.Provider:
        # An explicit provider takes nothing from the stack's aws:* config: pass who the
        # stack is, as infra/global_routing.py does for Global Accelerator.
        access = self._args.aws_access
        return aws.Provider(
            f"{name}-{network.key}",
            region=network.region,
            profile=access.profile,
            assume_roles=list(access.assume_roles) or None,
            shared_config_files=list(access.shared_config_files) or None,
            shared_credentials_files=list(access.shared_credentials_files) or None,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _create_side(
        self,
        pair: str,
        side: PeerNetwork,
        other: PeerNetwork,
        peering_id: pulumi.Output[str],
        provider: aws.Provider,
        accepter: aws.ec2.VpcPeeringConnectionAccepter,
    ) -> None:
        """Routes from `side`'s private subnets to `other`'s VPC, and `side`'s Redis
        open on its port to `other`'s VPC (the relay there), nothing else."""
        opts = pulumi.ResourceOptions(parent=self, provider=provider, depends_on=[accepter])
        # One route per private route table (one per AZ); the count is known only once
        # the regional stack's output resolves, so the routes are made in an apply.
        side.private_route_table_ids.apply(
            lambda tables: [
                aws.ec2.Route(
                    f"{pair}-route-{side.key}-{index}",
                    route_table_id=table,
                    destination_cidr_block=other.vpc_cidr,
                    vpc_peering_connection_id=peering_id,
                    opts=opts,
                )
                for index, table in enumerate(tables)
            ]
        )
        aws.ec2.SecurityGroupRule(
            f"{pair}-redis-from-{other.key}",
            type="ingress",
            security_group_id=side.redis_security_group_id,
            protocol="tcp",
            from_port=REDIS_PORT,
            to_port=REDIS_PORT,
            # Security groups cannot be referenced across regions: the far VPC's CIDR.
            cidr_blocks=[other.vpc_cidr],
            description=f"iofleet relay of {other.key} (docs/regions.md)",
            opts=opts,
        )


@dataclass
class RelayArgs:
    settings: RegionalConfig
    provider: k8s.Provider
    redis_url: pulumi.Output[str]
    """This region's Redis (the servers')."""
    far_redis_urls: dict[str, pulumi.Output[str]]
    """Far region name -> its Redis URL (a secret output of its stack)."""
    depends_on: list[pulumi.Resource] = field(default_factory=list)
    """The namespace (the server's SocketService)."""


class Relay(pulumi.ComponentResource):
    """The relay Deployment, its Secret and its PodDisruptionBudget."""

    def __init__(
        self, name: str, args: RelayArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:region_link:Relay", name, None, opts)
        self._args = args
        self._opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        namespace = args.settings.namespace
        far = pulumi.Output.all(
            **{region: url for region, url in sorted(args.far_redis_urls.items())}
        ).apply(lambda urls: ",".join(f"{region}={url}" for region, url in urls.items()))
        data: dict[str, pulumi.Input[str]] = {"redis-url": args.redis_url, "far-redis-url": far}
        # A changed far URL (a rotated AUTH token) rolls the relay: the pods read it at start.
        sha = pulumi.Output.all(args.redis_url, far).apply(
            lambda values: content_sha("\n".join(values))
        )
        secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=meta(RELAY, namespace, RELAY_LABELS),
            type="Opaque",
            string_data=data,
            opts=self._opts,
        )
        account = k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=meta(RELAY, namespace, RELAY_LABELS),
            automount_service_account_token=False,  # the relay never calls the API server
            opts=self._opts,
        )
        self.deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(RELAY, namespace, RELAY_LABELS),
            spec=self._spec(sha),
            opts=pulumi.ResourceOptions.merge(
                self._opts, pulumi.ResourceOptions(depends_on=[secret, account])
            ),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(RELAY, namespace, RELAY_LABELS),
            # One of the two always runs: a node drain moves the standby or hands the
            # lease over, never leaves the region without a relay.
            spec={"minAvailable": 1, "selector": {"matchLabels": RELAY_LABELS}},
            opts=self._opts,
        )
        self.register_outputs({"deployment": self.deployment.metadata["name"]})

    def _env(self) -> list[dict[str, Any]]:
        s = self._args.settings

        def secret(var: str, key: str) -> dict[str, Any]:
            return {"name": var, "valueFrom": {"secretKeyRef": {"name": RELAY, "key": key}}}

        plain = {
            # Links are named by stack (the far ones are IOFLEET_RELAY_FAR_REDIS_URL's keys).
            "IOFLEET_RELAY_REGION": s.stack,
            "IOFLEET_RELAY_RECOVERY": "true" if s.recovery else "false",
            "IOFLEET_RELAY_ADMIN_HOST": "0.0.0.0",
            "IOFLEET_RELAY_ADMIN_PORT": str(RELAY_ADMIN_PORT),
            "IOFLEET_RELAY_REQUIRE_TLS": "true",
        }
        return [
            secret("IOFLEET_RELAY_REDIS_URL", "redis-url"),
            secret("IOFLEET_RELAY_FAR_REDIS_URL", "far-redis-url"),
            *({"name": k, "value": v} for k, v in plain.items()),
        ]

    def _spec(self, secret_sha: pulumi.Output[str]) -> dict[str, Any]:
        probe = {"port": "admin"}
        return {
            "replicas": 2,
            "selector": {"matchLabels": RELAY_LABELS},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {
                    "labels": RELAY_LABELS,
                    "annotations": {"iofleet.io/secret-sha": secret_sha},
                },
                "spec": {
                    "serviceAccountName": RELAY,
                    "automountServiceAccountToken": False,
                    # A clean stop hands the lease over at once (relay/__main__.py).
                    "terminationGracePeriodSeconds": 15,
                    "securityContext": RESTRICTED_POD,
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "topology.kubernetes.io/zone",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": RELAY_LABELS},
                        }
                    ],
                    "containers": [
                        {
                            "name": "relay",
                            "image": self._args.settings.image,
                            "command": ["python", "-m", "relay"],
                            "ports": [
                                {
                                    "name": "admin",
                                    "containerPort": RELAY_ADMIN_PORT,
                                    "protocol": "TCP",
                                }
                            ],
                            "env": self._env(),
                            "resources": {
                                "requests": {"cpu": "250m", "memory": "256Mi"},
                                "limits": {"memory": "256Mi"},
                            },
                            "livenessProbe": {
                                "httpGet": {"path": "/healthz", **probe},
                                "periodSeconds": 10,
                                "timeoutSeconds": 2,
                            },
                            "readinessProbe": {
                                "httpGet": {"path": "/readyz", **probe},
                                "periodSeconds": 5,
                                "timeoutSeconds": 2,
                            },
                            "securityContext": RESTRICTED_CONTAINER,
                        }
                    ],
                },
            },
        }
