"""The one place that reads stack configuration.

Every ``iofleet:`` key is a field of ``Settings`` (type, default, bounds, description);
``Pulumi.yaml`` declares the same keys with the same types, defaults and descriptions
(``pulumi_yaml_config()`` renders them and a test keeps the two equal). ``load()`` reads
each key through ``pulumi.Config``; ``validate()`` checks a mapping of raw values (the
program and the offline ``python -m infra.check`` share it) and lists every problem at
once, one line each, naming the key and what is allowed.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import re
from collections.abc import Mapping
from typing import Any, Literal, get_args, get_origin

import pulumi
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    SecretStr,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

from infra import redis_rules
from server.contract import HS256_MIN_SECRET_BYTES, PING_INTERVAL_SECONDS, PING_TIMEOUT_SECONDS

NAMESPACE = "iofleet"

Kind = Literal["regional", "global", "registry"]
Balancer = Literal["alb", "nginx", "haproxy"]
Routing = Literal["route53", "accelerator"]
Autoscaling = Literal["hpa", "direct", "none"]
NodeAutoscalerKind = Literal["karpenter", "none"]
RedisMode = Literal["replication", "cluster"]

# EKS minor versions this program is tested with (kubernetes-validate runs every manifest
# at the default), with the end of standard and of extended support from the EKS release
# calendar (docs.aws.amazon.com/eks/latest/userguide/kubernetes-versions.html). Add a
# version here when you upgrade to it; past its extended-support end EKS upgrades the
# cluster itself and the pinned version would then ask for a downgrade.
EKS_VERSIONS: dict[str, tuple[datetime.date, datetime.date]] = {
    "1.33": (datetime.date(2026, 7, 29), datetime.date(2027, 7, 29)),
    "1.34": (datetime.date(2026, 12, 2), datetime.date(2027, 12, 2)),
    "1.35": (datetime.date(2027, 3, 27), datetime.date(2028, 3, 27)),
}
DEFAULT_CLUSTER_VERSION = "1.35"

QUANTITY = re.compile(r"^\d+(\.\d+)?(m|k|Ki|Mi|Gi|Ti|M|G|T)?$")
PINNED_IMAGE = re.compile(r"^[\w.\-/:]+(@sha256:[0-9a-f]{64}|:[\w][\w.\-]{0,127})$")
NAME = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")
IAM_PRINCIPAL = re.compile(r"^arn:aws[\w-]*:iam::\d{12}:(role|user)/[\w+=,.@/-]+$")
AWS_REGION = re.compile(r"^[a-z]{2}(-gov)?-[a-z]+-\d$")
LABEL = re.compile(r"^([\w./-]{1,253})=([\w.-]{0,63})$")

# Values shipped in the example stack files that must be replaced before a first `up`.
DOC_ACCOUNTS = ("111122223333", "123456789012")
DOC_NETWORKS = tuple(
    ipaddress.ip_network(n) for n in ("192.0.2.0/24", "198.51.100.0/24", "203.0.113.0/24")
)
DOC_DOMAIN = re.compile(r"(^|\.)example\.(com|org|net)$")
RESERVED_TLDS = (".example", ".invalid", ".test", ".localhost")


class ConfigError(ValueError):
    """Stack configuration values that are missing or not allowed (one line each)."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


def _key(default: Any, description: str, **bounds: Any) -> Any:
    return Field(default, description=description, **bounds)


def full(key: str) -> str:
    return f"{NAMESPACE}:{key}"


class Settings(BaseModel):
    """Every ``iofleet:`` key; regional and global stacks share one key space."""

    # validate_default: a required key left empty (= unset) still reaches its check.
    model_config = ConfigDict(frozen=True, extra="forbid", validate_default=True)

    kind: Kind = _key(
        "regional",
        "regional (one region's fleet), global (routing) or registry (image repositories).",
    )
    # --- regional: network and cluster
    vpc_cidr: str = _key("10.0.0.0/16", "VPC CIDR (a /16../20), split per AZ.")
    az_count: int = _key(3, "Availability zones to span, 2 to 6.", ge=2, le=6)
    single_nat_gateway: bool = _key(
        False, "One NAT gateway instead of one per AZ (cheaper, not zone-safe).", strict=True
    )
    cluster_version: str = _key(
        DEFAULT_CLUSTER_VERSION, "EKS Kubernetes version (major.minor), one of EKS_VERSIONS."
    )
    cluster_public_access_cidrs: tuple[str, ...] = _key(
        ("0.0.0.0/0",), "CIDRs allowed to reach the EKS API endpoint (include your own)."
    )
    cluster_admin_arns: tuple[str, ...] = _key(
        (), "IAM roles/users given cluster admin through EKS access entries."
    )
    node_instance_types: tuple[str, ...] = _key(
        ("m7i.large",), "Managed node group instance types (x86_64)."
    )
    # 4, not 3: min_replicas 1-CPU servers on m7i.large plus a rollout's surge pod
    # (policy rollout-surge-fits-nodes).
    node_min: int = _key(4, "Node group minimum size.", ge=1, le=1000)
    node_desired: int = _key(4, "Node group initial size.", ge=1, le=1000)
    node_max: int = _key(12, "Node group maximum size.", ge=1, le=1000)
    # --- regional: node autoscaling and warm headroom (infra/node_autoscaling.py)
    node_autoscaler: NodeAutoscalerKind = _key(
        "karpenter", "karpenter (nodes follow pending pods) or none (the node group alone)."
    )
    node_pool_cpu_limit: int = _key(
        256, "Most vCPUs the Karpenter NodePool runs at once (a cost cap).", ge=1, le=100_000
    )
    node_ami_alias: str = _key(
        "al2023@latest",
        "Karpenter nodes' AMI alias; pin al2023@vYYYYMMDD to choose when nodes roll.",
    )
    headroom_pods: int = _key(
        1,
        "Warm room for this many server pods (placeholders they preempt); "
        "`iofleet plan --load-step` sizes it; 0 = none.",
        ge=0,
        le=1000,
    )
    # --- regional: Redis
    redis_mode: RedisMode = _key(
        "replication",
        "replication (one primary, cluster mode disabled) or cluster (cluster mode enabled: "
        "redis_shards primaries, sharded pub/sub); switching makes a new group.",
    )
    redis_shards: int = _key(
        1,
        "Shards (primaries) of a cluster-mode group, 1 to 500; replication has one.",
        ge=1,
        le=500,
    )
    redis_node_type: str = _key("cache.r7g.large", "ElastiCache node type.")
    redis_replicas: int = _key(
        1, "Replicas besides each primary (per shard in cluster mode), 1 to 5.", ge=1, le=5
    )
    redis_engine_version: str = _key("7.1", "ElastiCache Redis OSS engine version.")
    redis_engine: Literal["redis", "valkey"] = _key(
        "redis", "ElastiCache engine: redis (Redis OSS) or valkey (7.2+, same protocol)."
    )
    redis_snapshot_retention_days: int = _key(1, "Daily snapshots kept, 0 to 35.", ge=0, le=35)
    redis_auth_rotation: int = _key(
        0,
        "Redis AUTH rotation step, raised by one per `up`: odd = a new token beside the old "
        "(ROTATE), even = the old one dropped (SET); docs/infra.md.",
        ge=0,
        le=1_000_000,
    )
    # --- regional: workloads
    namespace: str = _key("iofleet", "Kubernetes namespace of the server and autoscaler.")
    image: str = _key("", "Server image, pinned: repo@sha256:... or repo:exact-tag.")
    autoscaling: Autoscaling = _key(
        "hpa", "hpa (HPA on iofleet_connections), direct (autoscaler scales) or none."
    )
    autoscaler_image: str = _key(
        "", "Autoscaler image, pinned like image (required unless autoscaling is none)."
    )
    server_cpu: str = _key("1", "CPU request of one server pod.")
    server_memory: str = _key("1Gi", "Memory request and limit of one server pod.")
    min_replicas: int = _key(3, "Minimum server pods.", ge=1, le=10000)
    max_replicas: int = _key(30, "Maximum server pods.", ge=1, le=10000)
    target_connections: int = _key(
        5000, "Target average iofleet_connections per pod.", ge=1, le=1_000_000
    )
    scale_up_stabilization_seconds: int = _key(0, "Scale-up stabilization window.", ge=0, le=3600)
    scale_up_percent: int = _key(100, "Scale-up: max % of pods added per minute.", ge=1, le=1000)
    scale_down_stabilization_seconds: int = _key(
        300, "Scale-down stabilization window.", ge=0, le=3600
    )
    scale_down_percent: int = _key(
        10, "Scale-down: max % of pods drained per minute.", ge=1, le=100
    )
    ping_interval: int = _key(
        int(PING_INTERVAL_SECONDS), "Engine.IO ping interval, seconds.", ge=1, le=300
    )
    ping_timeout: int = _key(
        int(PING_TIMEOUT_SECONDS), "Engine.IO ping timeout, seconds.", ge=1, le=300
    )
    # Longer than the server's own defaults (server.contract): an ALB/NLB takes several
    # seconds to deregister a target, and a production pod holds thousands of sockets.
    drain_delay: int = _key(15, "Seconds a draining pod waits for deregistration.", ge=0, le=600)
    drain_seconds: int = _key(60, "Seconds over which a drain closes connections.", ge=1, le=3600)
    max_connections: int = _key(10000, "Connections one server pod accepts.", ge=1, le=1_000_000)
    max_message_bytes: int = _key(
        1048576, "Largest accepted message, bytes.", ge=1, le=100 * 1024 * 1024
    )
    rate_limit: int = _key(20, "Events per second per connection and per user.", ge=1, le=100_000)
    # On by default: a client that reconnects (a drain, a rollout, a lost link) gets what
    # it missed. The server's own default is off (python-socketio client handlers get
    # the offset as an extra argument); a stack whose clients cannot take it sets false.
    recovery: bool = _key(
        True,
        "Connection state recovery (IOFLEET_RECOVERY); off only if clients cannot take it.",
        strict=True,
    )
    recovery_window_seconds: int = _key(
        120,
        "How long after a drop a client can recover (IOFLEET_RECOVERY_WINDOW_SECONDS).",
        ge=1,
        le=86400,
    )
    recovery_max_messages: int = _key(
        100_000,
        "Events the recovery stream keeps at most (IOFLEET_RECOVERY_MAX_MESSAGES).",
        ge=100,
        le=100_000_000,
    )
    transports: tuple[Literal["websocket", "polling"], ...] = _key(
        ("websocket", "polling"), "Engine.IO transports offered."
    )
    cors_origins: tuple[str, ...] = _key((), "Allowed browser origins (required, no wildcard).")
    handlers: str = _key("", "module:function registering events; empty = chat app.")
    jwt_public_key: str = _key("", "PEM public key for RS/ES JWTs; else jwt_secret.")
    jwt_secret: SecretStr = _key(
        SecretStr(""), "HS256 JWT secret (set with --secret); empty = generated and exported."
    )
    # Rotation windows (docs/infra.md, "Rotating a secret"): the servers accept these
    # besides the current values until they are unset again.
    jwt_secret_previous: SecretStr = _key(
        SecretStr(""), "HS256 JWT secret still accepted while a rotation rolls out (--secret)."
    )
    jwt_public_key_previous: str = _key(
        "", "PEM public key still accepted while a rotation rolls out."
    )
    admin_token: SecretStr = _key(
        SecretStr(""), "Servers' admin bearer token (set with --secret); empty = generated."
    )
    admin_token_previous: SecretStr = _key(
        SecretStr(""), "Admin token still accepted while a rotation rolls out (--secret)."
    )
    # --- regional: balancer and observability
    balancer: Balancer = _key("alb", "Public balancer: alb, nginx or haproxy.")
    certificate_arn: str = _key("", "ACM certificate for TLS on the balancer.")
    idle_timeout_seconds: int = _key(
        120, "Balancer idle timeout; must exceed ping_interval + ping_timeout.", ge=1, le=4000
    )
    haproxy_image: str = _key("haproxy:3.0.5", "HAProxy image (balancer: haproxy).")
    prometheus_namespace: str = _key("monitoring", "Namespace Prometheus scrapes from.")
    prometheus_operator: bool = _key(
        True, "Create PrometheusRule/ServiceMonitor (needs the operator's CRDs).", strict=True
    )
    prometheus_selector_label: str = _key(
        "release=prometheus",
        "label=value the Prometheus operator selects rules and monitors by, or none.",
    )
    prometheus_stack_install: bool = _key(
        True,
        "With prometheus_operator: install kube-prometheus-stack (operator, CRDs, Prometheus, "
        "Grafana) in prometheus_namespace; false = the cluster already runs one.",
        strict=True,
    )
    alarm_email: str = _key("", "Email subscribed to the CloudWatch alarm topic.")
    region_peers: tuple[str, ...] = _key(
        (),
        "Regional stacks whose rooms this region joins: a relay publishes into their Redis "
        "(docs/regions.md); needs the global stack's region_peering.",
    )
    # --- global
    regional_stacks: tuple[str, ...] = _key((), "Regional stacks to route over (global stack).")
    global_routing: Routing = _key("route53", "route53 (latency records) or accelerator.")
    domain: str = _key("", "Public name clients use, e.g. ws.example.com (route53).")
    hosted_zone_id: str = _key("", "Route 53 hosted zone of domain (route53).")
    health_check_path: str = _key("/", "Path the Route 53 health checks request.")
    # --- registry (infra/registry.py)
    image_regions: tuple[str, ...] = _key(
        (), "Regions to hold the ECR image repositories in (registry); empty = aws:region."
    )
    # 50 releases: two months of daily deploys with room to roll back; at the images'
    # ~300 MB each (README, "Images"; less compressed in ECR) under $3/month a region at
    # $0.10/GB-month. It must exceed what any stack still runs: an expired image's pods
    # cannot be rescheduled.
    image_keep_count: int = _key(
        50, "Images kept per repository, newest first (registry lifecycle policy).", ge=1, le=1000
    )
    region_peering: bool = _key(
        False,
        "Peer the regional stacks' VPCs for their relays: routes and the Redis port only "
        "(docs/regions.md).",
        strict=True,
    )

    # --- one key at a time (earlier keys are in info.data)

    @field_validator("vpc_cidr")
    @classmethod
    def _vpc_cidr(cls, value: str) -> str:
        try:
            network = ipaddress.ip_network(value)
        except ValueError:
            raise ValueError(f"{value!r} is not a CIDR") from None
        if not 16 <= network.prefixlen <= 20:
            raise ValueError(f"prefix /{network.prefixlen}; allowed /16../20")
        return value

    @field_validator("cluster_version")
    @classmethod
    def _cluster_version(cls, value: str) -> str:
        if value not in EKS_VERSIONS:
            raise ValueError(
                f"{value!r} is not a version this program knows; use one of "
                f"{', '.join(EKS_VERSIONS)} (major.minor, upgrade one minor at a time)"
            )
        return value

    @field_validator("cluster_public_access_cidrs")
    @classmethod
    def _public_cidrs(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        for cidr in value:
            try:
                network = ipaddress.ip_network(cidr)
            except ValueError:
                raise ValueError(f"{cidr!r} is not a CIDR") from None
            if _regional(info) and any(network.subnet_of(d) for d in DOC_NETWORKS):  # type: ignore[arg-type]
                raise ValueError(
                    f"{cidr} is a documentation-only range (placeholder); put the CIDRs "
                    "of the machines that run `pulumi up` and kubectl (curl -s "
                    "https://checkip.amazonaws.com), or Helm releases hang on an API "
                    "server they cannot reach"
                )
        if _regional(info) and not value:
            raise ValueError("is empty: nobody, not even `pulumi up`, could reach the API")
        return value

    @field_validator("cluster_admin_arns")
    @classmethod
    def _admins(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for arn in value:
            if not IAM_PRINCIPAL.match(arn):
                raise ValueError(
                    f"{arn!r} is not an IAM role or user ARN (arn:aws:iam::<account>:role/<name>)"
                )
            if _doc_account(arn):
                raise ValueError(f"{arn!r} is a placeholder; put your team's IAM role ARNs")
        return value

    @field_validator("node_ami_alias")
    @classmethod
    def _ami_alias(cls, value: str) -> str:
        # EC2NodeClass amiSelectorTerms alias: family@version (AL2023 for x86_64 nodes).
        if not re.match(r"^al2023@(latest|v\d{8})$", value):
            raise ValueError(f"{value!r} is not allowed; use al2023@latest or al2023@vYYYYMMDD")
        return value

    @field_validator("jwt_secret", "jwt_secret_previous")
    @classmethod
    def _hs256_length(cls, value: SecretStr) -> SecretStr:
        # The servers refuse a shorter one at start (server/settings.py): every pod would
        # crash-loop.
        size = len(value.get_secret_value().encode())
        if 0 < size < HS256_MIN_SECRET_BYTES:
            raise ValueError(f"must be at least {HS256_MIN_SECRET_BYTES} bytes (RFC 7518 3.2)")
        return value

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, value: str) -> str:
        if not NAME.match(value):
            raise ValueError(f"{value!r} is not a DNS-1123 label")
        return value

    @field_validator("image", "autoscaler_image")
    @classmethod
    def _image(cls, value: str, info: ValidationInfo) -> str:
        if not _regional(info):
            return value
        if info.field_name == "autoscaler_image" and info.data.get("autoscaling") == "none":
            return value
        if not value:
            what = "the server" if info.field_name == "image" else "the autoscaler"
            hint = "" if info.field_name == "image" else f", or set {full('autoscaling')}: none"
            raise ValueError(
                f"is required: {what}'s image pinned by digest (repo@sha256:...) or exact tag{hint}"
            )
        if not PINNED_IMAGE.match(value) or value.endswith(":latest"):
            raise ValueError(
                f"{value!r} is not pinned; use repo@sha256:<digest> or repo:<exact tag> "
                "(not latest)"
            )
        if _doc_account(value):
            raise ValueError(
                f"{value!r} is a placeholder (AWS's documentation account); push the image "
                "to your registry and put its reference (docs/infra.md, 'Images')"
            )
        return value

    @field_validator("server_cpu", "server_memory")
    @classmethod
    def _quantity(cls, value: str) -> str:
        if not QUANTITY.match(value):
            raise ValueError(f"{value!r} is not a Kubernetes quantity")
        return value

    @field_validator("cors_origins")
    @classmethod
    def _cors(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if not _regional(info):
            return value
        if not value:
            raise ValueError("is required: a list of allowed origins")
        for origin in value:
            if origin == "*" or not re.match(r"^https?://[^/\s]+$", origin):
                raise ValueError(f"{origin!r} is not an origin (scheme://host[:port], no *)")
            if DOC_DOMAIN.search(origin.split("://", 1)[1].split(":")[0]):
                raise ValueError(f"{origin!r} is a placeholder; put your web app's origins")
        return value

    @field_validator("certificate_arn")
    @classmethod
    def _certificate(cls, value: str) -> str:
        if value and not re.match(r"^arn:aws[\w-]*:acm:[\w-]+:\d{12}:certificate/[\w-]+$", value):
            raise ValueError(f"{value!r} is not an ACM ARN")
        if value and (_doc_account(value) or "00000000-0000-0000-0000-000000000000" in value):
            raise ValueError(
                f"{value!r} is a placeholder; put the ARN of an issued ACM certificate in "
                "this region (aws acm list-certificates), or remove the key for plain HTTP"
            )
        return value

    @field_validator("prometheus_selector_label")
    @classmethod
    def _label(cls, value: str) -> str:
        if value != "none" and not LABEL.match(value):
            raise ValueError(f"{value!r} is not label=value (e.g. release=kube-prometheus-stack)")
        return value

    @field_validator("alarm_email")
    @classmethod
    def _email(cls, value: str) -> str:
        if value and "@" not in value:
            raise ValueError(f"{value!r} is not an email address")
        domain = value.rpartition("@")[2].lower()
        # RFC 2606 names: documentation domains and reserved TLDs never receive mail.
        if value and (DOC_DOMAIN.search(domain) or domain.endswith(RESERVED_TLDS)):
            raise ValueError(
                f"{value!r} is a placeholder; put the address of your on-call list (or "
                "remove the key and subscribe the alarm topic yourself)"
            )
        return value

    @field_validator("image_regions")
    @classmethod
    def _image_regions(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for region in value:
            if not AWS_REGION.match(region):
                raise ValueError(f"{region!r} is not an AWS region like us-east-1")
        return value

    @field_validator("regional_stacks")
    @classmethod
    def _stacks(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if info.data.get("kind") == "global" and not value:
            raise ValueError("is required: a list of regional stack names")
        return value

    @field_validator("region_peers")
    @classmethod
    def _peers(cls, value: tuple[str, ...], info: ValidationInfo) -> tuple[str, ...]:
        if len(set(value)) != len(value):
            raise ValueError("names a stack twice")
        if any(not re.fullmatch(r"[a-z0-9-]+", peer) for peer in value):
            # The relay names its links by these (IOFLEET_RELAY_REGION's rule).
            raise ValueError("a peer is a regional stack name of [a-z0-9-], e.g. prod-eu-west-1")
        return value

    @field_validator("domain", "hosted_zone_id")
    @classmethod
    def _route53(cls, value: str, info: ValidationInfo) -> str:
        if info.data.get("kind") != "global" or info.data.get("global_routing") != "route53":
            return value
        if not value:
            what = (
                "the DNS name for latency records (route53)"
                if info.field_name == "domain"
                else "the Route 53 zone holding domain (aws route53 list-hosted-zones)"
            )
            raise ValueError(f"is required: {what}")
        if info.field_name == "domain" and DOC_DOMAIN.search(value):
            raise ValueError(f"{value!r} is a placeholder; put the name clients connect to")
        if info.field_name == "hosted_zone_id" and "EXAMPLE" in value.upper():
            raise ValueError(
                f"{value!r} is a placeholder; put the id of the zone holding domain "
                "(aws route53 list-hosted-zones)"
            )
        return value

    @field_validator("health_check_path")
    @classmethod
    def _path(cls, value: str) -> str:
        if not value.startswith("/"):
            raise ValueError(f"{value!r} must start with /")
        return value

    # --- rules across keys

    @model_validator(mode="after")
    def _together(self) -> Settings:
        if self.kind != "regional":
            return self
        problems = []
        if self.min_replicas > self.max_replicas:
            problems.append(
                f"{full('min_replicas')} ({self.min_replicas}) must not exceed "
                f"{full('max_replicas')} ({self.max_replicas})"
            )
        if not self.node_min <= self.node_desired <= self.node_max:
            problems.append(
                f"{full('node_desired')} ({self.node_desired}) must lie within "
                f"{full('node_min')}..{full('node_max')} ({self.node_min}..{self.node_max})"
            )
        floor = self.ping_interval + self.ping_timeout
        if self.idle_timeout_seconds <= floor:
            # A balancer that times out an idle WebSocket before the next ping cuts every
            # quiet client; the margin must cover ping interval + ping timeout.
            problems.append(
                f"{full('idle_timeout_seconds')} ({self.idle_timeout_seconds}) must exceed "
                f"ping_interval + ping_timeout ({floor})"
            )
        if self.jwt_public_key and self.jwt_secret.get_secret_value():
            problems.append(f"{full('jwt_public_key')} and {full('jwt_secret')}: set one, not both")
        problems.extend(self._redis_mode_problems())
        if problems:
            raise ValueError("\n".join(problems))
        return self

    def _redis_mode_problems(self) -> list[str]:
        mode = f"{full('redis_mode')}: {self.redis_mode}"
        if self.redis_mode == "replication":
            if self.redis_shards > 1:
                return [
                    f"{full('redis_shards')} ({self.redis_shards}) needs "
                    f"{full('redis_mode')}: cluster (a replication group has one primary)"
                ]
            return []
        problems = []
        if self.recovery and not redis_rules.RECOVERY_ON_CLUSTER:
            problems.append(
                f"{full('recovery')}: true with {mode}: "
                f"{redis_rules.RECOVERY_ON_CLUSTER_REASON}; set {full('recovery')}: false, "
                f"or {full('redis_mode')}: replication"
            )
        major = self.redis_engine_version.split(".", maxsplit=1)[0]
        if (
            self.redis_engine == "redis"
            and major.isdigit()
            and int(major) < redis_rules.SHARDED_PUBSUB_MIN_REDIS
        ):
            problems.append(
                f"{full('redis_engine_version')} ({self.redis_engine_version}) with {mode}: "
                "sharded pub/sub needs Redis OSS "
                f"{redis_rules.SHARDED_PUBSUB_MIN_REDIS}+ (or valkey)"
            )
        return problems


class RegionalConfig(Settings):
    """One region's fleet: network, Redis, EKS, workloads, balancer, alarms."""

    stack: str
    """Stack name; prefixes every physical name."""
    region: str
    """aws:region of the stack."""

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

    @property
    def has_autoscaler(self) -> bool:
        return self.autoscaling != "none"


class GlobalConfig(Settings):
    """Global routing over the regional stacks."""

    stack: str


class RegistryConfig(Settings):
    """The ECR repositories the regional stacks' images come from (one stack per account,
    made before the first regional `up`)."""

    stack: str
    region: str
    """aws:region of the stack (the repositories' region unless image_regions is set)."""

    @property
    def regions(self) -> tuple[str, ...]:
        return self.image_regions or (self.region,)


StackConfig = RegionalConfig | GlobalConfig | RegistryConfig


def _regional(info: ValidationInfo) -> bool:
    return bool(info.data.get("kind", "regional") == "regional")


def _doc_account(text: str) -> bool:
    return any(f":{account}:" in text or f"{account}.dkr" in text for account in DOC_ACCOUNTS)


# --- reading and checking ---------------------------------------------------------------


def _kind_of(annotation: Any) -> str:
    """The Pulumi.yaml type of a field."""
    if annotation is bool:
        return "boolean"
    if annotation is int:
        return "integer"
    if get_origin(annotation) is tuple:
        return "array"
    return "string"


def _plain(value: Any) -> Any:
    if isinstance(value, SecretStr):
        return value.get_secret_value()
    if isinstance(value, tuple):
        return list(value)
    return value


def pulumi_yaml_config() -> dict[str, dict[str, Any]]:
    """The ``config:`` block of Pulumi.yaml, as the model states it."""
    block: dict[str, dict[str, Any]] = {}
    for key, field in Settings.model_fields.items():
        kind = _kind_of(field.annotation)
        entry: dict[str, Any] = {"type": kind, "description": field.description}
        if kind == "array":
            entry["items"] = {"type": "string"}
        entry["default"] = _plain(field.default)
        block[key] = entry
    return block


def _parse(key: str, raw: Any) -> Any:
    """A raw config value (the engine passes strings; a stack file may hold YAML values)
    as the model's type; an empty value means unset."""
    if raw is None or raw == "":
        return None
    kind = _kind_of(Settings.model_fields[key].annotation)
    if kind == "array" and isinstance(raw, str):
        try:
            return json.loads(raw)
        except json.JSONDecodeError:
            return raw
    if kind == "boolean" and isinstance(raw, str) and raw.lower() in ("true", "false"):
        return raw.lower() == "true"
    if kind == "string" and isinstance(raw, bool | int | float):
        return json.dumps(raw)  # what Pulumi passes for a YAML scalar in a string key
    return raw


def _message(error: Mapping[str, Any]) -> str:
    """One line naming the key and what is allowed."""
    loc = error.get("loc") or ()
    key = str(loc[0]) if loc else ""
    kind = error["type"]
    value = error.get("input")
    field = Settings.model_fields.get(key)
    if not key:
        return str(error["msg"]).removeprefix("Value error, ")
    if kind == "extra_forbidden":
        return f"{full(key)} is not a known key; allowed keys: {', '.join(Settings.model_fields)}"
    if kind in ("greater_than_equal", "less_than_equal") and field is not None:
        bounds = {type(m).__name__: m for m in field.metadata}
        low = getattr(bounds.get("Ge"), "ge", "")
        high = getattr(bounds.get("Le"), "le", "")
        return f"{full(key)}: {value} is out of range; allowed {low}..{high}"
    if kind in ("int_parsing", "int_type", "int_from_float"):
        return f"{full(key)}: {value!r} is not an integer"
    if kind in ("bool_parsing", "bool_type"):
        return f"{full(key)}: {value!r} is not allowed; use true or false"
    if kind == "literal_error":
        allowed = get_args(field.annotation) if field is not None else ()
        if len(loc) > 1 and field is not None:
            allowed = get_args(get_args(field.annotation)[0])
        return f"{full(key)}: {value!r} is not allowed; use one of {', '.join(allowed)}"
    array = field is not None and _kind_of(field.annotation) == "array"
    if kind in ("tuple_type", "list_type", "string_type") and array:
        return f"{full(key)}: {value!r} is not allowed; use a list of strings"
    text = str(error["msg"]).removeprefix("Value error, ")
    separator = " " if text.startswith("is ") else ": "
    return f"{full(key)}{separator}{text}"


def support_warning(version: str, today: datetime.date) -> str | None:
    """A line when `version` has left EKS standard support on `today` (a date decides,
    so a warning, not an error)."""
    standard_end, extended_end = EKS_VERSIONS[version]
    if today <= standard_end:
        return None
    return (
        f"{full('cluster_version')}: {version} left EKS standard support on {standard_end} "
        f"(extended support, billed extra, ends {extended_end}); upgrade one minor version "
        "at a time (docs/infra.md, 'Upgrading Kubernetes')"
    )


def _warnings(config: Settings) -> list[str]:
    if config.kind != "regional":
        return []
    warning = support_warning(config.cluster_version, datetime.date.today())
    warnings = [warning] if warning else []
    if config.balancer == "nginx":
        warnings.append(
            f"{full('balancer')}: nginx: ingress-nginx was retired in March 2026 and gets no "
            "more security fixes; prefer haproxy or alb (docs/balancers.md, 'ingress-nginx')"
        )
    return warnings


def validate(
    values: Mapping[str, Any], *, stack: str, region: str | None
) -> tuple[StackConfig | None, list[str], list[str]]:
    """Check raw ``iofleet:`` values (without the namespace): (config, problems, warnings).
    Every problem is listed, not just the first."""
    parsed = {}
    for key, raw in values.items():
        value = _parse(key, raw) if key in Settings.model_fields else raw
        if value is not None:
            parsed[key] = value
    problems: list[str] = []
    kind = parsed.get("kind", "regional")
    model: type[StackConfig]
    extra: dict[str, Any] = {"stack": stack}
    if kind == "global":
        model = GlobalConfig
    else:
        model = RegistryConfig if kind == "registry" else RegionalConfig
        if not region:
            problems.append(f"aws:region is required: the AWS region of this {kind} stack")
        extra["region"] = region or ""
    try:
        config = model.model_validate({**parsed, **extra})
    except ValidationError as error:
        for line in (_message(e) for e in error.errors()):
            problems.extend(line.split("\n"))
        return None, problems, []
    if problems:
        return None, problems, []
    return config, [], _warnings(config)


def load() -> StackConfig:
    """Read every key through ``pulumi.Config`` and validate once; a ConfigError lists
    every problem, one line each. Keys the stack sets that no field reads (a misspelt
    key would otherwise be ignored) come from ``pulumi.runtime.get_config_env()``, the
    JSON map the language host passes the program."""
    config = pulumi.Config(NAMESPACE)
    values: dict[str, Any] = {key: config.get(key) for key in Settings.model_fields}
    prefix = f"{NAMESPACE}:"
    for full_key, value in pulumi.runtime.get_config_env().items():
        key = full_key.removeprefix(prefix)
        if full_key.startswith(prefix) and key not in values:
            values[key] = value
    result, problems, warnings = validate(
        values, stack=pulumi.get_stack(), region=pulumi.Config("aws").get("region")
    )
    if result is None:
        raise ConfigError(problems)
    for warning in warnings:
        pulumi.log.warn(warning)
    return result


class AwsAccess(BaseModel):
    """The stack's own AWS credential settings (``aws:*``), for what runs outside the
    default provider: the kubeconfig's ``aws eks get-token`` and explicit providers."""

    model_config = ConfigDict(frozen=True)

    profile: str | None = None
    assume_roles: tuple[dict[str, Any], ...] = ()
    """``aws:assumeRoles`` (pulumi-aws 7): a chain of roles, each with ``roleArn``."""
    shared_config_files: tuple[str, ...] = ()
    shared_credentials_files: tuple[str, ...] = ()

    @property
    def role_arn(self) -> str | None:
        """The role the stack ends up as (the last of the chain)."""
        return (
            str(self.assume_roles[-1].get("roleArn") or "") or None if self.assume_roles else None
        )


def aws_access() -> AwsAccess:
    """Read ``aws:profile``, ``aws:assumeRoles``, ``aws:sharedConfigFiles`` and
    ``aws:sharedCredentialsFiles`` (the keys that decide who the stack is)."""
    config = pulumi.Config("aws")
    return AwsAccess(
        profile=config.get("profile") or None,
        assume_roles=tuple(config.get_object("assumeRoles") or ()),
        shared_config_files=tuple(config.get_object("sharedConfigFiles") or ()),
        shared_credentials_files=tuple(config.get_object("sharedCredentialsFiles") or ()),
    )


def qualify(stack: str) -> str:
    """A bare stack name means this organization and project (DIY backends call their
    single organization "organization")."""
    if "/" in stack:
        return stack
    org = pulumi.get_organization() or "organization"
    return f"{org}/{pulumi.get_project()}/{stack}"
