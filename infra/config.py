"""The one place that reads stack configuration.

Every key lives in ``SPEC`` (type, default, description); ``Pulumi.yaml`` declares the
same keys with the same defaults (a test keeps the two in step). ``load()`` reads the
``iofleet:`` namespace once, validates it and returns a frozen dataclass; any problem
raises ``ConfigError`` whose message names the key and what is allowed.
"""

from __future__ import annotations

import ipaddress
import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import pulumi
import pulumi.runtime.config as runtime_config

NAMESPACE = "iofleet"

KINDS = ("regional", "global")
BALANCERS = ("alb", "nginx", "haproxy")
ROUTINGS = ("route53", "accelerator")

Balancer = Literal["alb", "nginx", "haproxy"]
Routing = Literal["route53", "accelerator"]


class ConfigError(ValueError):
    """A stack configuration value is missing or not allowed."""


@dataclass(frozen=True)
class Spec:
    """How one key is typed, defaulted and described (mirrored in Pulumi.yaml)."""

    type: Literal["string", "integer", "boolean", "array"]
    default: Any
    description: str


SPEC: dict[str, Spec] = {
    "kind": Spec("string", "regional", "regional (one region's fleet) or global (routing)."),
    # --- regional: network and cluster
    "vpc_cidr": Spec("string", "10.0.0.0/16", "VPC CIDR (a /16../20), split per AZ."),
    "az_count": Spec("integer", 3, "Availability zones to span, 2 to 6."),
    "single_nat_gateway": Spec(
        "boolean", False, "One NAT gateway instead of one per AZ (cheaper, not zone-safe)."
    ),
    "cluster_version": Spec("string", "1.31", "EKS Kubernetes version (major.minor)."),
    "cluster_public_access_cidrs": Spec(
        "array", ["0.0.0.0/0"], "CIDRs allowed to reach the EKS API endpoint."
    ),
    "node_instance_types": Spec("array", ["m7i.large"], "Managed node group instance types."),
    "node_min": Spec("integer", 3, "Node group minimum size."),
    "node_desired": Spec("integer", 3, "Node group initial size."),
    "node_max": Spec("integer", 12, "Node group maximum size."),
    # --- regional: Redis
    "redis_node_type": Spec("string", "cache.r7g.large", "ElastiCache node type."),
    "redis_replicas": Spec("integer", 1, "Read replicas besides the primary, 1 to 5."),
    "redis_engine_version": Spec("string", "7.1", "ElastiCache Redis OSS engine version."),
    "redis_snapshot_retention_days": Spec("integer", 1, "Daily snapshots kept, 0 to 35."),
    # --- regional: workloads
    "namespace": Spec("string", "iofleet", "Kubernetes namespace of the server and autoscaler."),
    "image": Spec("string", "", "Server image, pinned: repo@sha256:... or repo:exact-tag."),
    "autoscaler_image": Spec("string", "", "Autoscaler image, pinned like image."),
    "server_cpu": Spec("string", "1", "CPU request (and limit) of one server pod."),
    "server_memory": Spec("string", "1Gi", "Memory request and limit of one server pod."),
    "min_replicas": Spec("integer", 3, "HPA minimum server pods."),
    "max_replicas": Spec("integer", 30, "HPA maximum server pods."),
    "target_connections": Spec("integer", 5000, "HPA target average iofleet_connections per pod."),
    "scale_up_stabilization_seconds": Spec("integer", 0, "HPA scale-up stabilization window."),
    "scale_up_percent": Spec("integer", 100, "HPA scale-up: max % of pods added per minute."),
    "scale_down_stabilization_seconds": Spec(
        "integer", 300, "HPA scale-down stabilization window."
    ),
    "scale_down_percent": Spec("integer", 10, "HPA scale-down: max % of pods drained per minute."),
    "ping_interval": Spec("integer", 25, "Engine.IO ping interval, seconds."),
    "ping_timeout": Spec("integer", 20, "Engine.IO ping timeout, seconds."),
    "drain_delay": Spec("integer", 15, "Seconds a draining pod waits for deregistration."),
    "drain_seconds": Spec("integer", 60, "Seconds over which a drain closes connections."),
    "max_connections": Spec("integer", 10000, "Connections one server pod accepts."),
    "max_message_bytes": Spec("integer", 1048576, "Largest accepted message, bytes."),
    "rate_limit": Spec("integer", 20, "Events per second per connection and per user."),
    "transports": Spec("array", ["websocket", "polling"], "Engine.IO transports offered."),
    "cors_origins": Spec("array", [], "Allowed browser origins (required, no wildcard)."),
    "handlers": Spec("string", "", "module:function registering events; empty = chat app."),
    "jwt_public_key": Spec("string", "", "PEM public key for RS/ES JWTs; else jwt_secret."),
    "jwt_secret": Spec(
        "string", "", "HS256 JWT secret (set with --secret); empty = generated and exported."
    ),
    # --- regional: balancer and observability
    "balancer": Spec("string", "alb", "Public balancer: alb, nginx or haproxy."),
    "certificate_arn": Spec("string", "", "ACM certificate for TLS on the balancer."),
    "idle_timeout_seconds": Spec(
        "integer", 120, "Balancer idle timeout; must exceed ping_interval + ping_timeout."
    ),
    "haproxy_image": Spec("string", "haproxy:3.0.5", "HAProxy image (balancer: haproxy)."),
    "prometheus_namespace": Spec("string", "monitoring", "Namespace Prometheus scrapes from."),
    "prometheus_operator": Spec(
        "boolean", True, "Create PrometheusRule/ServiceMonitor (needs the operator's CRDs)."
    ),
    "alarm_email": Spec("string", "", "Email subscribed to the CloudWatch alarm topic."),
    # --- global
    "regional_stacks": Spec("array", [], "Regional stacks to route over (global stack)."),
    "global_routing": Spec("string", "route53", "route53 (latency records) or accelerator."),
    "domain": Spec("string", "", "Public name clients use, e.g. ws.example.com (route53)."),
    "hosted_zone_id": Spec("string", "", "Route 53 hosted zone of domain (route53)."),
    "health_check_path": Spec("string", "/", "Path the global health checks request."),
}

QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
PINNED_IMAGE = re.compile(r"^[\w.\-/:]+(@sha256:[0-9a-f]{64}|:[\w][\w.\-]{0,127})$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


@dataclass(frozen=True)
class RegionalConfig:
    """One region's fleet: network, Redis, EKS, workloads, balancer, alarms."""

    stack: str
    """Stack name; prefixes every physical name."""
    region: str
    """aws:region of the stack."""
    vpc_cidr: str
    az_count: int
    single_nat_gateway: bool
    cluster_version: str
    cluster_public_access_cidrs: tuple[str, ...]
    node_instance_types: tuple[str, ...]
    node_min: int
    node_desired: int
    node_max: int
    redis_node_type: str
    redis_replicas: int
    redis_engine_version: str
    redis_snapshot_retention_days: int
    namespace: str
    image: str
    autoscaler_image: str
    server_cpu: str
    server_memory: str
    min_replicas: int
    max_replicas: int
    target_connections: int
    scale_up_stabilization_seconds: int
    scale_up_percent: int
    scale_down_stabilization_seconds: int
    scale_down_percent: int
    ping_interval: int
    ping_timeout: int
    drain_delay: int
    drain_seconds: int
    max_connections: int
    max_message_bytes: int
    rate_limit: int
    transports: tuple[str, ...]
    cors_origins: tuple[str, ...]
    handlers: str
    jwt_public_key: str
    jwt_secret: pulumi.Output[str] | None
    """Operator-provided HS256 secret, kept secret; None = generate one."""
    balancer: Balancer
    certificate_arn: str
    idle_timeout_seconds: int
    haproxy_image: str
    prometheus_namespace: str
    prometheus_operator: bool
    alarm_email: str

    @property
    def termination_grace_seconds(self) -> int:
        """Drain delay + drain time + 15 s for the process to exit after the last close."""
        return self.drain_delay + self.drain_seconds + 15

    @property
    def deregistration_delay_seconds(self) -> int:
        """Balancer keeps a draining target's connections for the whole drain."""
        return self.drain_delay + self.drain_seconds

    @property
    def name(self) -> str:
        """Short physical-name prefix (AWS names are often capped at 32 characters)."""
        return f"iofleet-{self.stack}"[:28].rstrip("-")


@dataclass(frozen=True)
class GlobalConfig:
    """Global routing over the regional stacks."""

    stack: str
    regional_stacks: tuple[str, ...]
    """Fully qualified org/project/stack names of the regional stacks."""
    routing: Routing
    domain: str
    hosted_zone_id: str
    health_check_path: str


class _Reader:
    """Typed access to the raw ``iofleet:`` values with errors that name the key."""

    def __init__(self, raw: Mapping[str, str]) -> None:
        self.raw = raw

    def _value(self, key: str) -> str | None:
        value = self.raw.get(key)
        return None if value is None or value == "" else value

    def string(self, key: str, choices: tuple[str, ...] | None = None) -> str:
        value = self._value(key)
        result = str(SPEC[key].default) if value is None else value
        if choices is not None and result not in choices:
            raise ConfigError(f"{_full(key)}: {result!r} is not allowed; use one of {choices}")
        return result

    def required(self, key: str, what: str) -> str:
        value = self._value(key)
        if value is None:
            raise ConfigError(f"{_full(key)} is required: {what}")
        return value

    def integer(self, key: str, low: int, high: int) -> int:
        value = self._value(key)
        if value is None:
            return int(SPEC[key].default)
        try:
            number = int(value)
        except ValueError:
            raise ConfigError(f"{_full(key)}: {value!r} is not an integer") from None
        if not low <= number <= high:
            raise ConfigError(f"{_full(key)}: {number} is out of range; allowed {low}..{high}")
        return number

    def boolean(self, key: str) -> bool:
        value = self._value(key)
        if value is None:
            return bool(SPEC[key].default)
        if value.lower() not in ("true", "false"):
            raise ConfigError(f"{_full(key)}: {value!r} is not allowed; use true or false")
        return value.lower() == "true"

    def strings(self, key: str) -> tuple[str, ...]:
        value = self._value(key)
        if value is None:
            return tuple(SPEC[key].default)
        try:
            items = json.loads(value)
        except json.JSONDecodeError:
            items = None
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise ConfigError(
                f"{_full(key)}: {value!r} is not allowed; use a list of non-empty strings"
            )
        return tuple(items)


def _full(key: str) -> str:
    return f"{NAMESPACE}:{key}"


def raw_config() -> dict[str, str]:
    """Every ``iofleet:`` value the engine passed in, keyed without the namespace.

    Read from the runtime's config map (not ``pulumi.Config.get`` key by key) so that a
    misspelt key in a stack file is caught instead of silently ignored.
    """
    prefix = f"{NAMESPACE}:"
    return {
        key[len(prefix) :]: str(value)
        for key, value in runtime_config.CONFIG.get().items()
        if key.startswith(prefix)
    }


def load(raw: Mapping[str, str] | None = None) -> RegionalConfig | GlobalConfig:
    """Read and validate the stack's configuration (``raw`` overrides for tests)."""
    values = raw_config() if raw is None else dict(raw)
    unknown = sorted(set(values) - set(SPEC))
    if unknown:
        raise ConfigError(
            f"{_full(unknown[0])} is not a known key; allowed keys: {', '.join(sorted(SPEC))}"
        )
    reader = _Reader(values)
    kind = reader.string("kind", KINDS)
    stack = pulumi.get_stack()
    if kind == "global":
        return _load_global(reader, stack)
    region = pulumi.Config("aws").get("region")
    if not region:
        raise ConfigError("aws:region is required: the AWS region of this regional stack")
    return _load_regional(reader, stack, region)


def _load_global(reader: _Reader, stack: str) -> GlobalConfig:
    routing = reader.string("global_routing", ROUTINGS)
    stacks = reader.strings("regional_stacks")
    if not stacks:
        raise ConfigError(f"{_full('regional_stacks')} is required: a list of regional stack names")
    domain = hosted_zone_id = ""
    if routing == "route53":
        domain = reader.required("domain", "the DNS name for latency records (route53)")
        hosted_zone_id = reader.required("hosted_zone_id", "the zone holding domain")
    path = reader.string("health_check_path")
    if not path.startswith("/"):
        raise ConfigError(f"{_full('health_check_path')}: {path!r} must start with /")
    return GlobalConfig(
        stack=stack,
        regional_stacks=tuple(_qualify(s) for s in stacks),
        routing=routing,  # type: ignore[arg-type]  # checked against ROUTINGS above
        domain=domain,
        hosted_zone_id=hosted_zone_id,
        health_check_path=path,
    )


def _qualify(stack: str) -> str:
    """A bare stack name means this organization and project (DIY backends call their
    single organization "organization")."""
    if "/" in stack:
        return stack
    org = pulumi.get_organization() or "organization"
    return f"{org}/{pulumi.get_project()}/{stack}"


def _image(reader: _Reader, key: str) -> str:
    image = reader.required(key, "an image pinned by digest (repo@sha256:...) or exact tag")
    if not PINNED_IMAGE.match(image) or image.endswith(":latest"):
        raise ConfigError(
            f"{_full(key)}: {image!r} is not pinned; use repo@sha256:<digest> or repo:<exact tag>"
            " (not latest)"
        )
    return image


def _load_regional(reader: _Reader, stack: str, region: str) -> RegionalConfig:
    vpc_cidr = reader.string("vpc_cidr")
    try:
        network = ipaddress.ip_network(vpc_cidr)
    except ValueError:
        raise ConfigError(f"{_full('vpc_cidr')}: {vpc_cidr!r} is not a CIDR") from None
    if not 16 <= network.prefixlen <= 20:
        raise ConfigError(f"{_full('vpc_cidr')}: prefix /{network.prefixlen}; allowed /16../20")
    namespace = reader.string("namespace")
    if not NAME.match(namespace):
        raise ConfigError(f"{_full('namespace')}: {namespace!r} is not a DNS-1123 label")
    cors = reader.strings("cors_origins")
    if not cors:
        raise ConfigError(f"{_full('cors_origins')} is required: a list of allowed origins")
    transports = reader.strings("transports")
    if not set(transports) <= {"websocket", "polling"}:
        raise ConfigError(f"{_full('transports')}: {transports}; allowed websocket, polling")
    secret = reader._value("jwt_secret")
    version = reader.string("cluster_version")
    if not re.fullmatch(r"1\.\d{2}", version):
        raise ConfigError(f"{_full('cluster_version')}: {version!r}; use major.minor, e.g. 1.31")
    for key in ("server_cpu", "server_memory"):
        if not QUANTITY.match(reader.string(key)):
            raise ConfigError(f"{_full(key)}: {reader.string(key)!r} is not a Kubernetes quantity")
    certificate = reader.string("certificate_arn")
    if certificate and not certificate.startswith("arn:aws:acm:"):
        raise ConfigError(f"{_full('certificate_arn')}: {certificate!r} is not an ACM ARN")
    email = reader.string("alarm_email")
    if email and "@" not in email:
        raise ConfigError(f"{_full('alarm_email')}: {email!r} is not an email address")
    config = RegionalConfig(
        stack=stack,
        region=region,
        vpc_cidr=vpc_cidr,
        az_count=reader.integer("az_count", 2, 6),
        single_nat_gateway=reader.boolean("single_nat_gateway"),
        cluster_version=version,
        cluster_public_access_cidrs=reader.strings("cluster_public_access_cidrs"),
        node_instance_types=reader.strings("node_instance_types"),
        node_min=reader.integer("node_min", 1, 1000),
        node_desired=reader.integer("node_desired", 1, 1000),
        node_max=reader.integer("node_max", 1, 1000),
        redis_node_type=reader.string("redis_node_type"),
        redis_replicas=reader.integer("redis_replicas", 1, 5),
        redis_engine_version=reader.string("redis_engine_version"),
        redis_snapshot_retention_days=reader.integer("redis_snapshot_retention_days", 0, 35),
        namespace=namespace,
        image=_image(reader, "image"),
        autoscaler_image=_image(reader, "autoscaler_image"),
        server_cpu=reader.string("server_cpu"),
        server_memory=reader.string("server_memory"),
        min_replicas=reader.integer("min_replicas", 1, 10000),
        max_replicas=reader.integer("max_replicas", 1, 10000),
        target_connections=reader.integer("target_connections", 1, 1_000_000),
        scale_up_stabilization_seconds=reader.integer("scale_up_stabilization_seconds", 0, 3600),
        scale_up_percent=reader.integer("scale_up_percent", 1, 1000),
        scale_down_stabilization_seconds=reader.integer(
            "scale_down_stabilization_seconds", 0, 3600
        ),
        scale_down_percent=reader.integer("scale_down_percent", 1, 100),
        ping_interval=reader.integer("ping_interval", 1, 300),
        ping_timeout=reader.integer("ping_timeout", 1, 300),
        drain_delay=reader.integer("drain_delay", 0, 600),
        drain_seconds=reader.integer("drain_seconds", 1, 3600),
        max_connections=reader.integer("max_connections", 1, 1_000_000),
        max_message_bytes=reader.integer("max_message_bytes", 1, 100 * 1024 * 1024),
        rate_limit=reader.integer("rate_limit", 1, 100_000),
        transports=transports,
        cors_origins=cors,
        handlers=reader.string("handlers"),
        jwt_public_key=reader.string("jwt_public_key"),
        jwt_secret=None if secret is None else pulumi.Output.secret(secret),
        balancer=reader.string("balancer", BALANCERS),  # type: ignore[arg-type]
        certificate_arn=certificate,
        idle_timeout_seconds=reader.integer("idle_timeout_seconds", 1, 4000),
        haproxy_image=reader.string("haproxy_image"),
        prometheus_namespace=reader.string("prometheus_namespace"),
        prometheus_operator=reader.boolean("prometheus_operator"),
        alarm_email=email,
    )
    _check_together(config)
    return config


def _check_together(config: RegionalConfig) -> None:
    """Rules that span keys; each message names the keys involved."""
    if config.min_replicas > config.max_replicas:
        raise ConfigError(
            f"{_full('min_replicas')} ({config.min_replicas}) must not exceed "
            f"{_full('max_replicas')} ({config.max_replicas})"
        )
    if not config.node_min <= config.node_desired <= config.node_max:
        raise ConfigError(
            f"{_full('node_desired')} ({config.node_desired}) must lie within "
            f"{_full('node_min')}..{_full('node_max')} ({config.node_min}..{config.node_max})"
        )
    floor = config.ping_interval + config.ping_timeout
    if config.idle_timeout_seconds <= floor:
        # A balancer that times out an idle WebSocket before the next ping cuts every
        # quiet client; the margin must cover ping interval + ping timeout.
        raise ConfigError(
            f"{_full('idle_timeout_seconds')} ({config.idle_timeout_seconds}) must exceed "
            f"ping_interval + ping_timeout ({floor})"
        )
    if config.jwt_public_key and config.jwt_secret is not None:
        raise ConfigError(f"{_full('jwt_public_key')} and {_full('jwt_secret')}: set one, not both")
