"""Global: send each client to its nearest healthy region.

- ``route53``: one latency record per region (alias to the region's balancer) with an
  HTTPS health check, so a failing region drops out of DNS answers.
- ``accelerator``: Global Accelerator with one endpoint group per region and
  SOURCE_IP client affinity, so a client's polling requests stay in one region.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws

from infra.config import AwsAccess


@dataclass
class Region:
    """What the global stack reads from one regional stack's outputs."""

    stack: str
    region: pulumi.Output[str]
    hostname: pulumi.Output[str]
    lb_arn: pulumi.Output[str]
    lb_zone_id: pulumi.Output[str]
    scheme: pulumi.Output[str]
    """"https" when the regional balancer terminates TLS, else "http"."""
    balancer: pulumi.Output[str]
    """The regional stack's `balancer`: alb (an ALB) or nginx/haproxy (an NLB)."""
    key: str
    """Short stack name: names resources and the record's set identifier."""


@dataclass
class GlobalRoutingArgs:
    routing: str
    regions: list[Region]
    domain: str
    hosted_zone_id: str
    health_check_path: str
    aws_access: AwsAccess
    """The stack's credential settings: the us-west-2 provider must act as the stack does."""


class GlobalRouting(pulumi.ComponentResource):
    """Route 53 latency records with health checks, or a Global Accelerator."""

    endpoint: pulumi.Output[str]

    def __init__(
        self, name: str, args: GlobalRoutingArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:global_routing:GlobalRouting", name, None, opts)
        self._args = args
        if args.routing == "route53":
            self.endpoint = pulumi.Output.from_input(args.domain)
            for region in args.regions:
                self._create_latency_record(name, region)
        else:
            self.endpoint = self._create_accelerator(name)
        self.register_outputs({"endpoint": self.endpoint})

    def _create_latency_record(self, name: str, region: Region) -> None:
        a = self._args
        check = aws.route53.HealthCheck(
            f"{name}-{region.key}",
            type=region.scheme.apply(str.upper),
            fqdn=region.hostname,
            port=region.scheme.apply(_port),
            resource_path=a.health_check_path,
            request_interval=10,
            # Three failures in a row (30 s) before DNS stops answering with the region.
            failure_threshold=3,
            measure_latency=True,
            tags={"Name": f"iofleet-{region.key}"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.route53.Record(
            f"{name}-{region.key}",
            zone_id=a.hosted_zone_id,
            name=a.domain,
            type="A",
            set_identifier=region.key,
            latency_routing_policies=[{"region": region.region}],
            health_check_id=check.id,
            aliases=[
                {
                    "name": region.hostname,
                    "zone_id": region.lb_zone_id,
                    "evaluate_target_health": True,
                }
            ],
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _create_accelerator(self, name: str) -> pulumi.Output[str]:
        a = self._args
        access = a.aws_access
        # Global Accelerator's control plane lives in us-west-2 only. An explicit provider
        # takes nothing from the stack's aws:* config, so pass who the stack is.
        provider = aws.Provider(
            f"{name}-us-west-2",
            region="us-west-2",
            profile=access.profile,
            assume_roles=list(access.assume_roles) or None,
            shared_config_files=list(access.shared_config_files) or None,
            shared_credentials_files=list(access.shared_credentials_files) or None,
            opts=pulumi.ResourceOptions(parent=self),
        )
        opts = pulumi.ResourceOptions(parent=self, provider=provider)
        accelerator = aws.globalaccelerator.Accelerator(
            f"{name}-accelerator",
            name="iofleet",
            ip_address_type="IPV4",
            enabled=True,
            opts=opts,
        )
        for port in (80, 443):
            listener = aws.globalaccelerator.Listener(
                f"{name}-listener-{port}",
                accelerator_arn=accelerator.arn,
                protocol="TCP",
                # A client's requests keep reaching the same endpoint, so Engine.IO polling
                # (and the balancer's stickiness cookie) stay in one region.
                client_affinity="SOURCE_IP",
                port_ranges=[{"from_port": port, "to_port": port}],
                opts=opts,
            )
            for region in a.regions:
                # No health_check_* here: for ALB/NLB endpoints Global Accelerator uses the
                # balancer's own target health and ignores the endpoint group's settings
                # (AWS Global Accelerator docs, "Health check options").
                aws.globalaccelerator.EndpointGroup(
                    f"{name}-{region.key}-{port}",
                    listener_arn=listener.arn,
                    endpoint_group_region=region.region,
                    endpoint_configurations=[
                        {
                            "endpoint_id": region.lb_arn,
                            # 443 only to regions that serve TLS (weight 0 sends nothing).
                            "weight": region.scheme.apply(_weight(port)),
                            "client_ip_preservation_enabled": pulumi.Output.all(
                                region.balancer, region.scheme
                            ).apply(lambda v: client_ip_preservation(v[0], v[1])),
                        }
                    ],
                    opts=opts,
                )
        dns_name: pulumi.Output[str] = accelerator.dns_name
        return dns_name


def client_ip_preservation(balancer: str, scheme: str) -> bool:
    """Global Accelerator keeps the client's address for ALB endpoints, and for NLB
    endpoints only without TLS listeners: AWS refuses ClientIPPreservationEnabled for an
    NLB with a TLS listener (Global Accelerator API, EndpointConfiguration). The
    regional NLB (nginx, haproxy) has a TLS listener exactly when it serves https."""
    return balancer == "alb" or scheme != "https"


def _weight(port: int) -> Callable[[str], int]:
    def weight(scheme: str) -> int:
        return 0 if port == 443 and scheme != "https" else 100

    return weight


def _port(scheme: str) -> int:
    return 443 if scheme == "https" else 80
