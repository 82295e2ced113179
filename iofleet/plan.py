"""Capacity planning: load + measured server capacity -> servers, nodes, Redis, HPA, cost.

Pure functions over plain data (no I/O besides `load_catalog`/`load_capacity`, which
read the files they are given). Every figure carries the formula it came from, with
the numbers filled in, so the printed plan can be checked by hand; the tests in
`tests/tools/test_plan.py` do exactly that.

The load is split evenly across regions; each regional stack gets the same sizing
(prices differ per region).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, replace
from importlib import resources
from pathlib import Path
from typing import Any

from pydantic import BaseModel, Field, ValidationError
from ruamel.yaml import YAML

# The seeds' rules of thumb, shown beside a measured plan.
RULE_OF_THUMB_CONNECTIONS_PER_SERVER = 10_000
RULE_OF_THUMB_MEMORY_PER_CONNECTION_MB = 1.0

MIB_STEP = 64  # pod memory is rounded up to a multiple of 64 Mi


class PlanError(ValueError):
    """Inputs that cannot be planned for; the message names the input."""


# --- the instance-type catalog (iofleet/data/instance_types.yaml) -----------------


class NodeType(BaseModel):
    vcpu: float = Field(gt=0)
    memory_gib: float = Field(gt=0)
    hourly: dict[str, float]


class RedisType(BaseModel):
    vcpu: float = Field(gt=0)
    memory_gib: float = Field(gt=0)
    pubsub_messages_per_second: float = Field(gt=0)
    hourly: dict[str, float]


class Catalog(BaseModel):
    prices_read: str
    currency: str = "USD"
    hours_per_month: float = Field(730, gt=0)
    eks_cluster_hourly: float = Field(ge=0)
    node_types: dict[str, NodeType]
    redis_node_types: dict[str, RedisType]


def default_catalog_path() -> Path:
    return Path(str(resources.files("iofleet") / "data" / "instance_types.yaml"))


def load_catalog(path: Path | None = None) -> Catalog:
    path = path or default_catalog_path()
    try:
        raw = YAML(typ="safe").load(path.read_text())
        return Catalog.model_validate(raw)
    except (OSError, ValueError) as error:
        first = error.errors()[0] if isinstance(error, ValidationError) else None
        where = ".".join(str(p) for p in first["loc"]) + ": " + first["msg"] if first else error
        raise PlanError(f"instance-type table {path}: {where}") from None


# --- measured capacity (written by `iofleet loadtest --find-capacity`) ------------


@dataclass(frozen=True)
class Capacity:
    """What one server process holds within the service-level objective."""

    connections_per_server: int
    deliveries_per_second_per_server: float | None = None
    """None: not measured, deliveries do not limit the plan."""
    memory_per_connection_mb: float = RULE_OF_THUMB_MEMORY_PER_CONNECTION_MB
    base_memory_mb: float = 150.0
    """A server process with no connections (Python, libraries, buffers)."""
    source: str = "flags"

    def __post_init__(self) -> None:
        if self.connections_per_server < 1:
            raise PlanError("connections per server must be at least 1")
        if self.deliveries_per_second_per_server is not None and (
            self.deliveries_per_second_per_server <= 0
        ):
            raise PlanError("deliveries per second per server must be positive")
        if self.memory_per_connection_mb < 0 or self.base_memory_mb < 0:
            raise PlanError("memory figures must not be negative")


RULE_OF_THUMB = Capacity(
    connections_per_server=RULE_OF_THUMB_CONNECTIONS_PER_SERVER,
    memory_per_connection_mb=RULE_OF_THUMB_MEMORY_PER_CONNECTION_MB,
    source="rule of thumb (10k connections/server, 1 MB/connection)",
)


def load_capacity(path: Path) -> Capacity:
    """A capacity file: JSON with `connections_per_server` and optional
    `deliveries_per_second_per_server`, `memory_per_connection_mb`, `base_memory_mb`."""
    try:
        data = json.loads(path.read_text())
        return Capacity(
            connections_per_server=int(data["connections_per_server"]),
            deliveries_per_second_per_server=(
                float(data["deliveries_per_second_per_server"])
                if data.get("deliveries_per_second_per_server")
                else None
            ),
            memory_per_connection_mb=float(
                data.get("memory_per_connection_mb", RULE_OF_THUMB_MEMORY_PER_CONNECTION_MB)
            ),
            base_memory_mb=float(data.get("base_memory_mb", 150.0)),
            source=f"measured ({path})",
        )
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise PlanError(f"capacity file {path}: {error!r}") from None


# --- inputs and results ------------------------------------------------------------


@dataclass(frozen=True)
class Load:
    connections: int
    """Peak concurrent connections, all regions together."""
    messages_per_second: float = 0.0
    """Messages clients send per second at peak, all regions together."""
    fanout: float = 1.0
    """Average recipients of one message (room size that hears it)."""
    regions: tuple[str, ...] = ("us-east-1",)

    def __post_init__(self) -> None:
        if self.connections < 1:
            raise PlanError("--connections must be at least 1")
        if self.messages_per_second < 0 or self.fanout < 0:
            raise PlanError("--messages-per-second and --fanout must not be negative")
        if not self.regions:
            raise PlanError("--regions needs at least one region")


@dataclass(frozen=True)
class Policy:
    """Margins the plan keeps; each is printed with the figures it moves."""

    utilization: float = 0.7
    """Share of measured capacity a server runs at, at the HPA target."""
    burst: float = 0.5
    """Extra share of peak servers the HPA may add (surges, a lost zone)."""
    off_peak_share: float = 0.25
    """Share of peak servers kept at the quietest hour (HPA minimum)."""
    min_servers: int = 2
    min_nodes: int = 2
    server_cpu: float = 1.0
    """One server process uses one core: a pod asks for one CPU."""
    memory_margin: float = 1.25
    system_cpu_per_node: float = 0.35
    """kubelet reserve + daemon sets (VPC CNI, kube-proxy) per node, vCPU."""
    system_memory_gib_per_node: float = 1.0
    redis_replicas: int = 1
    node_type: str | None = None
    """None: the cheapest type in the region's table that fits."""
    redis_type: str | None = None

    def __post_init__(self) -> None:
        if not 0 < self.utilization <= 1:
            raise PlanError("utilization must be in (0, 1]")
        if self.burst < 0 or not 0 < self.off_peak_share <= 1:
            raise PlanError("burst must be >= 0 and off-peak share in (0, 1]")
        if self.min_servers < 1 or self.min_nodes < 1 or self.server_cpu <= 0:
            raise PlanError("minimum servers, nodes and server CPU must be positive")


@dataclass(frozen=True)
class Figure:
    name: str
    value: float | int | str
    formula: str


@dataclass(frozen=True)
class RegionPlan:
    region: str
    connections: int
    deliveries_per_second: float
    target_connections: int
    servers: int
    min_replicas: int
    max_replicas: int
    max_connections: int
    server_cpu: str
    server_memory: str
    node_type: str
    pods_per_node: int
    node_min: int
    node_desired: int
    node_max: int
    redis_node_type: str
    redis_replicas: int
    monthly_cost: float
    figures: tuple[Figure, ...] = field(default=(), compare=False)

    def stack_config(self) -> dict[str, Any]:
        """The Pulumi config keys (without the `iofleet:` prefix) this plan sets."""
        return {
            "target_connections": self.target_connections,
            "min_replicas": self.min_replicas,
            "max_replicas": self.max_replicas,
            "max_connections": self.max_connections,
            "server_cpu": self.server_cpu,
            "server_memory": self.server_memory,
            "node_instance_types": [self.node_type],
            "node_min": self.node_min,
            "node_desired": self.node_desired,
            "node_max": self.node_max,
            "redis_node_type": self.redis_node_type,
            "redis_replicas": self.redis_replicas,
        }


@dataclass(frozen=True)
class Plan:
    load: Load
    capacity: Capacity
    policy: Policy
    regions: tuple[RegionPlan, ...]
    monthly_cost: float
    currency: str
    prices_read: str

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


# --- the sizing --------------------------------------------------------------------


def cpu_quantity(cpu: float) -> str:
    """Kubernetes CPU quantity: whole cores as '1', else millicores."""
    return str(int(cpu)) if float(cpu).is_integer() else f"{round(cpu * 1000)}m"


def plan(load: Load, capacity: Capacity, catalog: Catalog, policy: Policy | None = None) -> Plan:
    policy = policy or Policy()
    regions = tuple(_plan_region(r, load, capacity, catalog, policy) for r in load.regions)
    return Plan(
        load=load,
        capacity=capacity,
        policy=policy,
        regions=regions,
        monthly_cost=round(sum(r.monthly_cost for r in regions), 2),
        currency=catalog.currency,
        prices_read=catalog.prices_read,
    )


def _plan_region(
    region: str, load: Load, capacity: Capacity, catalog: Catalog, policy: Policy
) -> RegionPlan:
    n = len(load.regions)
    u = policy.utilization
    figures: list[Figure] = []

    def note(name: str, value: Any, formula: str) -> Any:
        figures.append(Figure(name, value, formula))
        return value

    conns = note(
        "connections per region",
        math.ceil(load.connections / n),
        f"ceil({load.connections} / {n} regions)",
    )
    messages = load.messages_per_second / n
    deliveries = note(
        "deliveries/s per region",
        round(messages * load.fanout, 3),
        f"{load.messages_per_second} msg/s x fanout {load.fanout} / {n} regions",
    )
    by_connections = capacity.connections_per_server * u
    per_server_delivery = capacity.deliveries_per_second_per_server
    if per_server_delivery is not None and deliveries > 0:
        # The HPA scales on connections, so a delivery limit becomes a lower
        # connections target: the connections at which a server's share of the
        # deliveries reaches its budget.
        by_deliveries = conns * per_server_delivery * u / deliveries
        target = note(
            "HPA target_connections",
            max(1, math.floor(min(by_connections, by_deliveries))),
            f"floor(min({capacity.connections_per_server} conn x {u}, "
            f"{conns} conn x {per_server_delivery:g} deliv/s x {u} / {deliveries:g} deliv/s))",
        )
    else:
        target = note(
            "HPA target_connections",
            max(1, math.floor(by_connections)),
            f"floor({capacity.connections_per_server} conn/server x utilization {u})",
        )
    servers = note(
        "servers at peak",
        max(policy.min_servers, math.ceil(conns / target)),
        f"max({policy.min_servers}, ceil({conns} / {target}))",
    )
    max_replicas = note(
        "HPA max_replicas",
        math.ceil(servers * (1 + policy.burst)),
        f"ceil({servers} x (1 + burst {policy.burst}))",
    )
    min_replicas = note(
        "HPA min_replicas",
        min(max_replicas, max(policy.min_servers, math.ceil(servers * policy.off_peak_share))),
        f"max({policy.min_servers}, ceil({servers} x off-peak {policy.off_peak_share}))",
    )
    max_connections = note(
        "server max_connections",
        capacity.connections_per_server,
        "measured connections per server (refuse beyond, so clients retry elsewhere)",
    )
    memory_mb = (
        capacity.base_memory_mb + capacity.memory_per_connection_mb * max_connections
    ) * policy.memory_margin
    memory_mi = math.ceil(memory_mb * 1_000_000 / 2**20 / MIB_STEP) * MIB_STEP
    server_memory = note(
        "pod memory (request = limit)",
        f"{memory_mi}Mi",
        f"({capacity.base_memory_mb:g} MB + {capacity.memory_per_connection_mb:g} MB x "
        f"{max_connections}) x {policy.memory_margin}, up to {MIB_STEP}Mi",
    )
    server_cpu = note(
        "pod CPU (request = limit)",
        cpu_quantity(policy.server_cpu),
        "one server process per pod uses one core",
    )
    pod_memory_gib = memory_mi / 1024
    node_type, pods_per_node = _choose_node(
        region, catalog, policy, servers, pod_memory_gib, figures
    )
    node_min = policy.min_nodes
    node_desired = max(node_min, math.ceil(servers / pods_per_node))
    node_max = max(node_desired, math.ceil(max_replicas / pods_per_node))
    note("nodes desired", node_desired, f"max({node_min}, ceil({servers} / {pods_per_node}))")
    note("nodes max", node_max, f"ceil({max_replicas} / {pods_per_node})")
    # Each message is published once and relayed to the servers holding members of
    # its room: at most one per recipient, at most every server (nodes subscribe only
    # to the rooms they serve).
    subscribers = min(load.fanout, max_replicas)
    redis_load = messages * (1 + subscribers)
    redis_type = _choose_redis(region, catalog, policy, redis_load, figures)
    note(
        "Redis pub/sub load msg/s",
        round(redis_load, 1),
        f"{messages:g} msg/s in x (1 + min(fanout {load.fanout:g}, {max_replicas} servers))",
    )
    node_price = catalog.node_types[node_type].hourly[region]
    redis_price = catalog.redis_node_types[redis_type].hourly[region]
    hours = catalog.hours_per_month
    monthly = round(
        hours
        * (
            node_desired * node_price
            + (1 + policy.redis_replicas) * redis_price
            + catalog.eks_cluster_hourly
        ),
        2,
    )
    note(
        "monthly cost",
        monthly,
        f"{hours:g} h x ({node_desired} x {node_price} + {1 + policy.redis_replicas} x "
        f"{redis_price} + EKS {catalog.eks_cluster_hourly})",
    )
    return RegionPlan(
        region=region,
        connections=conns,
        deliveries_per_second=deliveries,
        target_connections=target,
        servers=servers,
        min_replicas=min_replicas,
        max_replicas=max_replicas,
        max_connections=max_connections,
        server_cpu=server_cpu,
        server_memory=server_memory,
        node_type=node_type,
        pods_per_node=pods_per_node,
        node_min=node_min,
        node_desired=node_desired,
        node_max=node_max,
        redis_node_type=redis_type,
        redis_replicas=policy.redis_replicas,
        monthly_cost=monthly,
        figures=tuple(figures),
    )


def pods_per_node(node: NodeType, policy: Policy, pod_memory_gib: float) -> int:
    by_cpu = math.floor((node.vcpu - policy.system_cpu_per_node) / policy.server_cpu)
    by_memory = math.floor((node.memory_gib - policy.system_memory_gib_per_node) / pod_memory_gib)
    return max(0, min(by_cpu, by_memory))


def _choose_node(
    region: str,
    catalog: Catalog,
    policy: Policy,
    servers: int,
    pod_memory_gib: float,
    figures: list[Figure],
) -> tuple[str, int]:
    if not any(region in node.hourly for node in catalog.node_types.values()):
        raise PlanError(f"no prices for region {region!r} in the instance-type table: add them")
    names = [policy.node_type] if policy.node_type else sorted(catalog.node_types)
    best: tuple[float, int, str] | None = None
    for name in names:
        node = catalog.node_types.get(name)
        if node is None:
            raise PlanError(f"node type {name!r} is not in the instance-type table")
        if region not in node.hourly:
            if policy.node_type:
                raise PlanError(f"node type {name!r} has no price for region {region!r}")
            continue
        fit = pods_per_node(node, policy, pod_memory_gib)
        if fit == 0:
            if policy.node_type:
                raise PlanError(
                    f"node type {name!r} ({node.vcpu:g} vCPU, {node.memory_gib:g} GiB) cannot "
                    f"hold one server pod ({policy.server_cpu:g} CPU, {pod_memory_gib:.2f} GiB)"
                )
            continue
        cost = max(policy.min_nodes, math.ceil(servers / fit)) * node.hourly[region]
        candidate = (round(cost, 6), -fit, name)
        if best is None or candidate < best:
            best = candidate
    if best is None:
        raise PlanError(
            f"no node type in the table holds one server pod in {region} "
            f"({policy.server_cpu:g} CPU, {pod_memory_gib:.2f} GiB)"
        )
    name, fit = best[2], -best[1]
    node = catalog.node_types[name]
    figures.append(
        Figure(
            "pods per node",
            fit,
            f"{name}: min(floor(({node.vcpu:g} - {policy.system_cpu_per_node}) vCPU / "
            f"{policy.server_cpu:g}), floor(({node.memory_gib:g} - "
            f"{policy.system_memory_gib_per_node}) GiB / {pod_memory_gib:.3f} GiB))"
            + ("" if policy.node_type else "; cheapest type for the peak"),
        )
    )
    return name, fit


def _choose_redis(
    region: str, catalog: Catalog, policy: Policy, load: float, figures: list[Figure]
) -> str:
    u = policy.utilization
    if policy.redis_type:
        if policy.redis_type not in catalog.redis_node_types:
            raise PlanError(f"Redis node type {policy.redis_type!r} is not in the table")
        chosen = policy.redis_type
    else:
        fitting = [
            (t.hourly[region], name)
            for name, t in catalog.redis_node_types.items()
            if region in t.hourly and t.pubsub_messages_per_second * u >= load
        ]
        if not fitting:
            raise PlanError(
                f"no Redis node type in the table relays {load:.0f} msg/s in {region} "
                "at the planned utilization: split the load across more regions or add a type"
            )
        chosen = min(fitting)[1]
    kind = catalog.redis_node_types[chosen]
    if region not in kind.hourly:
        raise PlanError(f"Redis node type {chosen!r} has no price for region {region!r}")
    figures.append(
        Figure(
            "Redis node type",
            chosen,
            f"cheapest with {kind.pubsub_messages_per_second:g} msg/s x {u} >= load",
        )
    )
    return chosen


def compare_to_rule_of_thumb(measured: Plan, catalog: Catalog) -> Plan:
    """The same load and policy sized with the seeds' rules of thumb."""
    return plan(measured.load, RULE_OF_THUMB, catalog, replace(measured.policy))
