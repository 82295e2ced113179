"""Network: a VPC over several AZs with public subnets (balancers) and private subnets
(nodes, Redis), each private subnet leaving through a NAT gateway."""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

import pulumi
import pulumi_aws as aws


@dataclass
class NetworkArgs:
    cidr: str
    """VPC CIDR; split into one public and one private subnet per AZ."""
    az_count: int
    cluster_name: str
    """EKS cluster name, for the subnet tags the load balancer controller discovers."""
    single_nat_gateway: bool
    tags: dict[str, str]


class Network(pulumi.ComponentResource):
    """VPC, subnets, internet and NAT gateways, route tables."""

    vpc_id: pulumi.Output[str]
    vpc_cidr: pulumi.Output[str]
    public_subnet_ids: list[pulumi.Output[str]]
    private_subnet_ids: list[pulumi.Output[str]]
    private_route_table_ids: list[pulumi.Output[str]]
    """One per AZ: where a peered region's routes go (infra/region_link.py)."""

    def __init__(
        self, name: str, args: NetworkArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:network:Network", name, None, opts)
        self._name = name
        self._args = args
        zones = aws.get_availability_zones(
            state="available", opts=pulumi.InvokeOptions(parent=self)
        ).names[: args.az_count]
        if len(zones) < 2:
            raise ValueError(f"the region offers {len(zones)} AZ(s); iofleet needs at least 2")
        public_cidrs, private_cidrs = _subnet_cidrs(args.cidr, len(zones))

        self._vpc = aws.ec2.Vpc(
            f"{name}-vpc",
            cidr_block=args.cidr,
            # EKS and the ElastiCache endpoint names resolve through the VPC resolver.
            enable_dns_hostnames=True,
            enable_dns_support=True,
            tags={**args.tags, "Name": f"{name}-vpc"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        igw = aws.ec2.InternetGateway(
            f"{name}-igw",
            vpc_id=self._vpc.id,
            tags={**args.tags, "Name": f"{name}-igw"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        public_rt = aws.ec2.RouteTable(
            f"{name}-public",
            vpc_id=self._vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "gateway_id": igw.id}],
            tags={**args.tags, "Name": f"{name}-public"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        public = [
            self._create_subnet(zone, cidr, public=True, route_table_id=public_rt.id)
            for zone, cidr in zip(zones, public_cidrs, strict=True)
        ]
        # One NAT per AZ keeps a zone's egress alive when another zone fails.
        nat_count = 1 if args.single_nat_gateway else len(zones)
        nats = [self._create_nat(zones[i], public[i]) for i in range(nat_count)]
        nats = nats * len(zones) if args.single_nat_gateway else nats
        self.private_route_table_ids = [
            self._private_route_table(zone, nat) for zone, nat in zip(zones, nats, strict=True)
        ]
        private = [
            self._create_subnet(zone, cidr, public=False, route_table_id=table)
            for zone, cidr, table in zip(
                zones, private_cidrs, self.private_route_table_ids, strict=True
            )
        ]

        self.vpc_id = self._vpc.id
        self.vpc_cidr = self._vpc.cidr_block
        self.public_subnet_ids = [s.id for s in public]
        self.private_subnet_ids = [s.id for s in private]
        self.register_outputs(
            {
                "vpc_id": self.vpc_id,
                "public_subnet_ids": self.public_subnet_ids,
                "private_subnet_ids": self.private_subnet_ids,
            }
        )

    def _create_subnet(
        self, zone: str, cidr: str, *, public: bool, route_table_id: pulumi.Input[str]
    ) -> aws.ec2.Subnet:
        tier = "public" if public else "private"
        # The AWS Load Balancer Controller picks subnets by these tags: internet-facing
        # balancers in role/elb, internal ones in role/internal-elb.
        role = "kubernetes.io/role/elb" if public else "kubernetes.io/role/internal-elb"
        subnet = aws.ec2.Subnet(
            f"{self._name}-{tier}-{zone}",
            vpc_id=self._vpc.id,
            cidr_block=cidr,
            availability_zone=zone,
            map_public_ip_on_launch=False,
            tags={
                **self._args.tags,
                "Name": f"{self._name}-{tier}-{zone}",
                role: "1",
                f"kubernetes.io/cluster/{self._args.cluster_name}": "shared",
            },
            opts=pulumi.ResourceOptions(parent=self),
        )
        aws.ec2.RouteTableAssociation(
            f"{self._name}-{tier}-{zone}",
            subnet_id=subnet.id,
            route_table_id=route_table_id,
            opts=pulumi.ResourceOptions(parent=self),
        )
        return subnet

    def _create_nat(self, zone: str, subnet: aws.ec2.Subnet) -> pulumi.Output[str]:
        eip = aws.ec2.Eip(
            f"{self._name}-nat-{zone}",
            domain="vpc",
            tags={**self._args.tags, "Name": f"{self._name}-nat-{zone}"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        nat = aws.ec2.NatGateway(
            f"{self._name}-nat-{zone}",
            allocation_id=eip.id,
            subnet_id=subnet.id,
            tags={**self._args.tags, "Name": f"{self._name}-nat-{zone}"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        nat_id: pulumi.Output[str] = nat.id
        return nat_id

    def _private_route_table(self, zone: str, nat_id: pulumi.Output[str]) -> pulumi.Output[str]:
        table = aws.ec2.RouteTable(
            f"{self._name}-private-{zone}",
            vpc_id=self._vpc.id,
            routes=[{"cidr_block": "0.0.0.0/0", "nat_gateway_id": nat_id}],
            tags={**self._args.tags, "Name": f"{self._name}-private-{zone}"},
            opts=pulumi.ResourceOptions(parent=self),
        )
        table_id: pulumi.Output[str] = table.id
        return table_id


def _subnet_cidrs(cidr: str, zones: int) -> tuple[list[str], list[str]]:
    """Public subnets take the first /+4 blocks, private ones the blocks from the middle,
    so each AZ gets a 1/16 public and a 1/16 private slice with room to grow."""
    blocks = list(ipaddress.ip_network(cidr).subnets(prefixlen_diff=4))
    public = [str(b) for b in blocks[:zones]]
    private = [str(b) for b in blocks[8 : 8 + zones]]
    return public, private
