"""iofleet's invariants as policies. Each check is a pure function over resource
properties (camelCase, as the engine passes them) returning violation messages; the
`POLICIES` list wraps them for pulumi-policy. Only stdlib, pulumi_policy,
`server.contract` and `infra.redis_rules` (stdlib only; the pack's __main__ puts the repo
root on sys.path) here: the pack runs in its own small virtualenv.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

from pulumi_policy import (
    EnforcementLevel,
    ReportViolation,
    ResourceValidationArgs,
    ResourceValidationPolicy,
    StackValidationArgs,
    StackValidationPolicy,
)

from infra import redis_rules
from server.contract import (
    ADMIN_PORT,
    CONNECTIONS_METRIC,
    DRAIN_DELAY_SECONDS,
    DRAIN_SECONDS,
    PING_INTERVAL_SECONDS,
    PING_TIMEOUT_SECONDS,
)

REPLICATION_GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
DEPLOYMENT = "kubernetes:apps/v1:Deployment"
HPA = "kubernetes:autoscaling/v2:HorizontalPodAutoscaler"
SERVICE = "kubernetes:core/v1:Service"
INGRESS = "kubernetes:networking.k8s.io/v1:Ingress"
CONFIG_MAP = "kubernetes:core/v1:ConfigMap"
WORKLOADS = {
    DEPLOYMENT: ("spec", "template", "spec"),
    "kubernetes:apps/v1:StatefulSet": ("spec", "template", "spec"),
    "kubernetes:apps/v1:DaemonSet": ("spec", "template", "spec"),
    "kubernetes:batch/v1:Job": ("spec", "template", "spec"),
    "kubernetes:core/v1:Pod": ("spec",),
}
API_SERVICE = "kubernetes:apiregistration.k8s.io/v1:APIService"
HELM_RELEASE = "kubernetes:helm.sh/v3:Release"
PRIORITY_CLASS = "kubernetes:scheduling.k8s.io/v1:PriorityClass"
PAUSE_IMAGE = re.compile(r"(^|/)pause(:|@|$)")
"""A placeholder pod's image (infra/node_autoscaling.py's headroom)."""
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
# The server's own defaults (server.contract) when a variable is not set.
SERVER_DEFAULTS = {
    "IOFLEET_PING_INTERVAL": PING_INTERVAL_SECONDS,
    "IOFLEET_PING_TIMEOUT": PING_TIMEOUT_SECONDS,
    "IOFLEET_DRAIN_SECONDS": DRAIN_SECONDS,
    "IOFLEET_DRAIN_DELAY": DRAIN_DELAY_SECONDS,
    "IOFLEET_ADMIN_PORT": float(ADMIN_PORT),
}
# Balancer defaults when nothing is set: ALB 60 s idle, ingress-nginx 60 s read/send.
ALB_DEFAULT_IDLE = 60.0
NGINX_DEFAULT_TIMEOUT = 60.0

Resource = tuple[str, Mapping[str, Any]]
"""(type, props): what the stack-level checks look at."""


def _dig(value: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(value, Mapping):
            return None
        value = value.get(key)
    return value


def _containers(pod_spec: Any) -> list[Mapping[str, Any]]:
    if not isinstance(pod_spec, Mapping):
        return []
    return [
        c
        for key in ("initContainers", "containers")
        for c in pod_spec.get(key) or []
        if isinstance(c, Mapping)
    ]


def _env(container: Mapping[str, Any]) -> dict[str, str]:
    return {
        str(e.get("name")): str(e.get("value"))
        for e in container.get("env") or []
        if isinstance(e, Mapping) and "value" in e
    }


def _number(env: Mapping[str, str], name: str) -> float:
    try:
        return float(env[name])
    except (KeyError, ValueError):
        return SERVER_DEFAULTS[name]


def _is_server(container: Mapping[str, Any]) -> bool:
    """A socket server container: runs `python -m server`."""
    command = [str(c) for c in (container.get("command") or []) + (container.get("args") or [])]
    return "server" in command and "-m" in command


def _server_containers(resources: Iterable[Resource]) -> list[tuple[str, Mapping[str, Any]]]:
    """(deployment name, container) for every server container in the stack."""
    found = []
    for typ, props in resources:
        if typ != DEPLOYMENT:
            continue
        name = str(_dig(props, "metadata", "name"))
        for container in _containers(_dig(props, *WORKLOADS[DEPLOYMENT])):
            if _is_server(container):
                found.append((name, container))
    return found


def _is_relay(container: Mapping[str, Any]) -> bool:
    """An inter-region relay container: runs `python -m relay` (docs/regions.md)."""
    command = [str(c) for c in (container.get("command") or []) + (container.get("args") or [])]
    return "relay" in command and "-m" in command


# --- resource checks -----------------------------------------------------------------


def check_relay_tls(props: Mapping[str, Any]) -> list[str]:
    """A relay crosses regions: it must refuse a far Redis without TLS, and the far
    URLs (endpoint and AUTH token) must come from a Secret, never a plain value."""
    problems = []
    for container in _containers(_dig(props, *WORKLOADS[DEPLOYMENT])):
        if not _is_relay(container):
            continue
        env = {str(e.get("name")): e for e in container.get("env") or []}
        if str(_dig(env.get("IOFLEET_RELAY_REQUIRE_TLS"), "value")).lower() != "true":
            problems.append(
                "relay: IOFLEET_RELAY_REQUIRE_TLS must be true (a cross-region path without "
                "TLS carries users' messages and the far Redis AUTH token in clear)"
            )
        far = env.get("IOFLEET_RELAY_FAR_REDIS_URL")
        if far is None or _dig(far, "valueFrom", "secretKeyRef") is None:
            problems.append(
                "relay: IOFLEET_RELAY_FAR_REDIS_URL must come from a Secret (secretKeyRef), "
                "not a plain value"
            )
    return problems


def check_redis(props: Mapping[str, Any]) -> list[str]:
    """Redis carries user messages: TLS, auth, encryption and a standby in another AZ."""
    problems = []
    required = {
        "transitEncryptionEnabled": "TLS in transit",
        "atRestEncryptionEnabled": "encryption at rest",
        "multiAzEnabled": "Multi-AZ",
        "automaticFailoverEnabled": "automatic failover",
    }
    for key, what in required.items():
        if props.get(key) is not True:
            problems.append(f"Redis replication group must enable {what} ({key})")
    if not props.get("authToken"):
        problems.append("Redis replication group must require an auth token (authToken)")
    if props.get("authTokenUpdateStrategy") == "DELETE":
        problems.append(
            "Redis replication group must keep its auth token (authTokenUpdateStrategy DELETE"
            " turns AUTH off)"
        )
    if _is_cluster_mode(props):
        # Every shard is a primary of its own slots: one without a replica loses them
        # (and every room hashed there) until AWS replaces the node.
        if float(props.get("replicasPerNodeGroup") or 0) < 1:
            problems.append(
                "Redis cluster-mode group needs a replica in every shard for failover "
                "(replicasPerNodeGroup>=1)"
            )
    elif float(props.get("numCacheClusters") or 0) < 2:
        problems.append(
            "Redis replication group needs a replica for failover (numCacheClusters>=2)"
        )
    return problems


def _is_cluster_mode(props: Mapping[str, Any]) -> bool:
    return props.get("clusterMode") == "enabled" or props.get("numNodeGroups") is not None


def check_recovery_redis(resources: Sequence[Resource]) -> list[str]:
    """Connection state recovery only where infra.redis_rules allows it: not on a Redis
    Cluster while RECOVERY_ON_CLUSTER is False."""
    if redis_rules.RECOVERY_ON_CLUSTER:
        return []
    clusters = [p for t, p in resources if t == REPLICATION_GROUP and _is_cluster_mode(p)]
    if not clusters:
        return []
    return [
        f"Deployment {name}: IOFLEET_RECOVERY=true with a cluster-mode Redis group: "
        f"{redis_rules.RECOVERY_ON_CLUSTER_REASON}"
        for name, container in _server_containers(resources)
        if _env(container).get("IOFLEET_RECOVERY", "").lower() == "true"
    ]


def check_termination_grace(props: Mapping[str, Any]) -> list[str]:
    """A server pod must outlive its drain: grace > DRAIN_DELAY + DRAIN_SECONDS."""
    pod = _dig(props, *WORKLOADS[DEPLOYMENT])
    problems = []
    for container in _containers(pod):
        if not _is_server(container):
            continue
        env = _env(container)
        drain = _number(env, "IOFLEET_DRAIN_DELAY") + _number(env, "IOFLEET_DRAIN_SECONDS")
        grace = float(_dig(pod, "terminationGracePeriodSeconds") or 30)
        if grace <= drain:
            problems.append(
                f"terminationGracePeriodSeconds ({grace:g}) must exceed drain delay + drain "
                f"seconds ({drain:g}), or Kubernetes kills connections mid-drain"
            )
    return problems


def check_non_root(resource_type: str, props: Mapping[str, Any]) -> list[str]:
    """Every container runs as a non-root user without privilege escalation."""
    path = WORKLOADS.get(resource_type)
    if path is None:
        return []
    pod = _dig(props, *path)
    pod_context = _dig(pod, "securityContext") or {}
    problems = []
    for container in _containers(pod):
        context = container.get("securityContext") or {}
        name = container.get("name")
        non_root = context.get("runAsNonRoot", pod_context.get("runAsNonRoot"))
        user = context.get("runAsUser", pod_context.get("runAsUser"))
        if non_root is not True:
            problems.append(f"container {name}: runAsNonRoot must be true")
        if user is not None and float(user) == 0:
            problems.append(f"container {name}: runAsUser must not be 0")
        if context.get("allowPrivilegeEscalation") is not False:
            problems.append(f"container {name}: allowPrivilegeEscalation must be false")
    return problems


def _is_karpenter(props: Mapping[str, Any]) -> bool:
    return str(props.get("chart") or "").rstrip("/").rsplit("/", 1)[-1] == "karpenter"


def check_karpenter_deletion_cost(props: Mapping[str, Any]) -> list[str]:
    """A PodDeletionCostManagement controller in Karpenter (proposed upstream,
    kubernetes-sigs/karpenter PR #2894; not in the pinned v1.14.1) would rewrite
    controller.kubernetes.io/pod-deletion-cost by its own node ranking, erasing the iofleet
    autoscaler's ranking of pods by connections: the gate is set off, explicitly, ahead of
    the release that adds it (a chart that turns it on by default must not do so silently)."""
    if not _is_karpenter(props):
        return []
    values = props.get("values") or {}
    problems = []
    if _dig(values, "settings", "featureGates", "podDeletionCostManagement") is not False:
        problems.append(
            "Karpenter release must set settings.featureGates.podDeletionCostManagement: "
            "false, or Karpenter rewrites controller.kubernetes.io/pod-deletion-cost "
            "(the autoscaler's ranking of pods by connections)"
        )
    for env in _dig(values, "controller", "env") or []:
        value = str(env.get("value", "")) if isinstance(env, Mapping) else ""
        if env.get("name") == "FEATURE_GATES" and re.search(
            r"PodDeletionCostManagement=true", value, re.IGNORECASE
        ):
            problems.append(
                "Karpenter release turns PodDeletionCostManagement on in controller.env "
                "FEATURE_GATES"
            )
    return problems


def check_karpenter_placement(props: Mapping[str, Any]) -> list[str]:
    """Karpenter's controller never runs on a node it manages (it could consolidate its
    own node away, and nothing would bring nodes back): every required node-affinity term
    excludes karpenter.sh/nodepool, stated in the release, not left to chart defaults."""
    if not _is_karpenter(props):
        return []
    terms = _dig(
        props.get("values"),
        "affinity",
        "nodeAffinity",
        "requiredDuringSchedulingIgnoredDuringExecution",
        "nodeSelectorTerms",
    )

    def excludes(term: Any) -> bool:
        return any(
            _dig(e, "key") == "karpenter.sh/nodepool" and _dig(e, "operator") == "DoesNotExist"
            for e in _dig(term, "matchExpressions") or []
        )

    if not terms or not all(excludes(t) for t in terms):
        return [
            "Karpenter release must keep its controller off Karpenter's nodes: every "
            "affinity.nodeAffinity required term needs karpenter.sh/nodepool DoesNotExist"
        ]
    return []


# --- stack checks --------------------------------------------------------------------


def _ping_floor(resources: Sequence[Resource]) -> float:
    floors = [
        _number(_env(c), "IOFLEET_PING_INTERVAL") + _number(_env(c), "IOFLEET_PING_TIMEOUT")
        for _, c in _server_containers(resources)
    ]
    return max(
        floors,
        default=SERVER_DEFAULTS["IOFLEET_PING_INTERVAL"] + SERVER_DEFAULTS["IOFLEET_PING_TIMEOUT"],
    )


def _seconds(text: str) -> float:
    """HAProxy/nginx durations: 60, 60s, 2m, 1h, 500ms."""
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m|h)?", text.strip())
    if match is None:
        return 0.0
    value, unit = float(match.group(1)), match.group(2) or "s"
    return value * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[unit]


def check_idle_timeouts(resources: Sequence[Resource]) -> list[str]:
    """Every balancer's idle timeout exceeds ping interval + ping timeout, or quiet
    clients are cut between two pings."""
    floor = _ping_floor(resources)
    problems = []
    for typ, props in resources:
        notes = _dig(props, "metadata", "annotations") or {}
        name = _dig(props, "metadata", "name")
        if typ == INGRESS and _dig(props, "spec", "ingressClassName") == "alb":
            attrs = str(notes.get("alb.ingress.kubernetes.io/load-balancer-attributes", ""))
            found = re.search(r"idle_timeout\.timeout_seconds=(\d+)", attrs)
            idle = float(found.group(1)) if found else ALB_DEFAULT_IDLE
            if idle <= floor:
                problems.append(f"ALB Ingress {name}: idle timeout {idle:g}s <= {floor:g}s")
        elif typ == INGRESS and _dig(props, "spec", "ingressClassName") == "nginx":
            for key in ("proxy-read-timeout", "proxy-send-timeout"):
                value = notes.get(f"nginx.ingress.kubernetes.io/{key}")
                seconds = _seconds(str(value)) if value else NGINX_DEFAULT_TIMEOUT
                if seconds <= floor:
                    problems.append(f"nginx Ingress {name}: {key} {seconds:g}s <= {floor:g}s")
        elif typ == CONFIG_MAP and "haproxy.cfg" in (props.get("data") or {}):
            config = str(props["data"]["haproxy.cfg"])
            for kind in ("client", "server", "tunnel"):
                found = re.search(rf"^\s*timeout {kind}\s+(\S+)", config, re.M)
                seconds = _seconds(found.group(1)) if found else 0.0
                if seconds <= floor:
                    problems.append(f"HAProxy {name}: timeout {kind} {seconds:g}s <= {floor:g}s")
    return problems


def check_connection_autoscaling(resources: Sequence[Resource]) -> list[str]:
    """Each server Deployment scales on connection count: an HPA on the Pods metric
    iofleet_connections, or the iofleet autoscaler pointed at it."""
    scaled: set[str] = set()
    for typ, props in resources:
        if typ == HPA:
            target = _dig(props, "spec", "scaleTargetRef", "name")
            for metric in _dig(props, "spec", "metrics") or []:
                if _dig(metric, "pods", "metric", "name") == CONNECTIONS_METRIC:
                    scaled.add(str(target))
        if typ == DEPLOYMENT:
            for container in _containers(_dig(props, *WORKLOADS[DEPLOYMENT])):
                command = [str(c) for c in container.get("command") or []]
                if "autoscaler" in command and "-m" in command:
                    scaled.add(_env(container).get("IOFLEET_AUTOSCALER_DEPLOYMENT", ""))
    return [
        f"server Deployment {name} has no HPA or autoscaler on {CONNECTIONS_METRIC}"
        for name in sorted({n for n, _ in _server_containers(resources)} - scaled)
    ]


def _connection_hpas(resources: Sequence[Resource]) -> list[str]:
    """Names of the HPAs that scale on the Pods metric iofleet_connections."""
    return [
        str(_dig(props, "metadata", "name"))
        for typ, props in resources
        if typ == HPA
        and any(
            _dig(m, "pods", "metric", "name") == CONNECTIONS_METRIC
            for m in _dig(props, "spec", "metrics") or []
        )
    ]


def check_hpa_has_metrics_source(resources: Sequence[Resource]) -> list[str]:
    """An HPA on iofleet_connections is blind without the iofleet autoscaler serving
    custom.metrics.k8s.io: its Deployment and APIServices v1beta1 and v1beta2."""
    hpas = _connection_hpas(resources)
    if not hpas:
        return []
    versions = {
        str(_dig(props, "spec", "version"))
        for typ, props in resources
        if typ == API_SERVICE and _dig(props, "spec", "group") == CUSTOM_METRICS_GROUP
    }
    autoscaler = any(
        "autoscaler" in [str(c) for c in container.get("command") or []]
        for typ, props in resources
        if typ == DEPLOYMENT
        for container in _containers(_dig(props, *WORKLOADS[DEPLOYMENT]))
    )
    missing = []
    if not autoscaler:
        missing.append("the iofleet autoscaler Deployment")
    missing += [
        f"APIService {v}.{CUSTOM_METRICS_GROUP}"
        for v in ("v1beta1", "v1beta2")
        if v not in versions
    ]
    return [
        f"HPA {name} scales on {CONNECTIONS_METRIC} but the stack has no {', no '.join(missing)}"
        for name in hpas
        if missing
    ]


def _pod_priority(pod: Any, classes: Mapping[str, Mapping[str, Any]]) -> float:
    """A pod's priority: its PriorityClass's value, else the global default's, else 0."""
    name = _dig(pod, "priorityClassName")
    if name:
        return float(_dig(classes.get(str(name)), "value") or 0)
    defaults = [c for c in classes.values() if c.get("globalDefault") is True]
    return float(defaults[0].get("value") or 0) if defaults else 0.0


def _is_placeholder(pod: Any) -> bool:
    """A headroom placeholder: every container runs the pause image."""
    containers = _containers(pod)
    return bool(containers) and all(PAUSE_IMAGE.search(str(c.get("image", ""))) for c in containers)


def check_headroom_priority(resources: Sequence[Resource]) -> list[str]:
    """Placeholder pods (warm headroom) yield to the servers: their PriorityClass exists,
    is below every server pod's priority and never preempts; else a load step's server
    pods stay Pending behind them, or the placeholders evict servers."""
    classes = {
        str(_dig(props, "metadata", "name")): props
        for typ, props in resources
        if typ == PRIORITY_CLASS
    }
    servers = [
        _pod_priority(_dig(props, *WORKLOADS[DEPLOYMENT]), classes)
        for typ, props in resources
        if typ == DEPLOYMENT
        and any(_is_server(c) for c in _containers(_dig(props, *WORKLOADS[DEPLOYMENT])))
    ]
    problems = []
    for typ, props in resources:
        pod = _dig(props, *WORKLOADS.get(typ, ("-",)))
        if not _is_placeholder(pod):
            continue
        name = _dig(props, "metadata", "name")
        wanted = _dig(pod, "priorityClassName")
        if not wanted or str(wanted) not in classes:
            problems.append(f"placeholder {name} needs its own PriorityClass (none found)")
            continue
        value = _pod_priority(pod, classes)
        if servers and value >= min(servers):
            problems.append(
                f"placeholder {name}: priority {value:g} must be below the server pods' "
                f"({min(servers):g}), or server pods cannot preempt it"
            )
        if classes[str(wanted)].get("preemptionPolicy") != "Never":
            problems.append(
                f"placeholder {name}: PriorityClass {wanted} must have preemptionPolicy Never"
            )
    return problems


def check_admin_private(resources: Sequence[Resource]) -> list[str]:
    """The admin port (drain, metrics) is never behind a public Service or Ingress."""
    admin_ports: set[str] = {"admin"}
    for _, container in _server_containers(resources):
        admin_ports.add(str(int(_number(_env(container), "IOFLEET_ADMIN_PORT"))))
        for port in container.get("ports") or []:
            if port.get("name") == "admin":
                admin_ports.add(str(int(float(port.get("containerPort", 0)))))
    problems = []
    admin_services: dict[str, set[str]] = {}
    for typ, props in resources:
        if typ != SERVICE:
            continue
        name = str(_dig(props, "metadata", "name"))
        for port in _dig(props, "spec", "ports") or []:
            target = port.get("targetPort", port.get("port"))
            if _port_key(target) in admin_ports:
                admin_services.setdefault(name, set()).update(
                    {_port_key(port.get("port")), str(port.get("name"))}
                )
                if _dig(props, "spec", "type") in ("LoadBalancer", "NodePort"):
                    problems.append(f"Service {name} exposes the admin port publicly")
    for typ, props in resources:
        if typ != INGRESS:
            continue
        for backend in _ingress_backends(props):
            service = str(_dig(backend, "service", "name"))
            port = _dig(backend, "service", "port") or {}
            key = _port_key(port.get("number", port.get("name")))
            if key in admin_ports or key in admin_services.get(service, set()):
                problems.append(f"Ingress routes to the admin port of Service {service}")
    return problems


def _port_key(value: Any) -> str:
    if isinstance(value, float | int):
        return str(int(value))
    return str(value)


def _ingress_backends(props: Mapping[str, Any]) -> list[Mapping[str, Any]]:
    backends = []
    default = _dig(props, "spec", "defaultBackend")
    if isinstance(default, Mapping):
        backends.append(default)
    for rule in _dig(props, "spec", "rules") or []:
        for path in _dig(rule, "http", "paths") or []:
            if isinstance(_dig(path, "backend"), Mapping):
                backends.append(path["backend"])
    return backends


PDB = "kubernetes:policy/v1:PodDisruptionBudget"


def _count_or_share(value: Any) -> tuple[float, bool]:
    """A rollingUpdate/PDB field, 1 or "25%", as (number, is a percentage)."""
    text = str(value).strip()
    try:
        return (float(text[:-1]), True) if text.endswith("%") else (float(text), False)
    except ValueError:
        return (-1.0, False)


def _calls_drain(handler: Any) -> bool:
    """A lifecycle handler that asks the server to drain (POST /admin/drain)."""
    return "/admin/drain" in " ".join(
        [str(c) for c in _dig(handler, "exec", "command") or []]
        + [str(_dig(handler, "httpGet", "path") or "")]
    )


def _pdb_limits(props: Mapping[str, Any], labels: Mapping[str, Any]) -> bool:
    """The PDB selects pods with `labels` and lets evictions through one at a time at
    most (maxUnavailable 1, or any minAvailable)."""
    selector = _dig(props, "spec", "selector", "matchLabels") or {}
    if not selector or any(labels.get(k) != v for k, v in selector.items()):
        return False
    most = _dig(props, "spec", "maxUnavailable")
    if most is None:
        return _dig(props, "spec", "minAvailable") is not None
    number, share = _count_or_share(most)
    return not share and 0 < number <= 1


def check_rolling_update(resources: Sequence[Resource]) -> list[str]:
    """A server Deployment replaces pods so that no client is left without a server and
    no message is lost: surge first (maxSurge >= 1, maxUnavailable 0: the new pod is
    ready before an old one goes), an old pod drains in its preStop hook (POST
    /admin/drain, so its clients reconnect while every other pod serves), readiness is
    /readyz (ready means taking sessions; a drain turns it 503), and a PDB lets node
    drains evict one pod at a time. The grace period is `termination-grace-covers-drain`'s."""
    problems = []
    pdbs = [props for typ, props in resources if typ == PDB]
    for typ, props in resources:
        if typ != DEPLOYMENT:
            continue
        servers = [c for c in _containers(_dig(props, *WORKLOADS[DEPLOYMENT])) if _is_server(c)]
        if not servers:
            continue
        name = _dig(props, "metadata", "name")
        strategy = _dig(props, "spec", "strategy") or {}
        rolling = strategy.get("rollingUpdate") or {}
        # Kubernetes' defaults are 25% and 25%: an old pod may go before its successor.
        surge, _ = _count_or_share(rolling.get("maxSurge", "25%"))
        unavailable, _ = _count_or_share(rolling.get("maxUnavailable", "25%"))
        if strategy.get("type", "RollingUpdate") != "RollingUpdate":
            problems.append(f"Deployment {name}: strategy {strategy.get('type')} drops every pod")
        elif surge <= 0:
            problems.append(f"Deployment {name}: maxSurge must be >= 1 (a new pod first)")
        elif unavailable != 0:
            problems.append(
                f"Deployment {name}: maxUnavailable must be 0 (no old pod goes before a new"
                " one is ready)"
            )
        for container in servers:
            if not _calls_drain(_dig(container, "lifecycle", "preStop")):
                problems.append(
                    f"Deployment {name}: the server's preStop hook must drain it"
                    " (POST /admin/drain?wait=true)"
                )
            if _dig(container, "readinessProbe", "httpGet", "path") != "/readyz":
                problems.append(f"Deployment {name}: the server's readinessProbe must be /readyz")
        labels = _dig(props, "spec", "template", "metadata", "labels") or {}
        if not any(_pdb_limits(pdb, labels) for pdb in pdbs):
            problems.append(
                f"Deployment {name}: no PodDisruptionBudget (maxUnavailable 1) selects its"
                " pods: a node drain could evict them all at once"
            )
    return problems


# --- pulumi-policy wrappers ----------------------------------------------------------


def _resource_policy(name: str, description: str, types: set[str], check: Any) -> Any:
    def validate(args: ResourceValidationArgs, report: ReportViolation) -> None:
        if args.resource_type not in types:
            return
        for problem in check(args.resource_type, args.props):
            report(problem, None)

    return ResourceValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=EnforcementLevel.MANDATORY,
    )


def _stack_policy(
    name: str,
    description: str,
    check: Any,
    level: EnforcementLevel = EnforcementLevel.MANDATORY,
) -> Any:
    def validate(args: StackValidationArgs, report: ReportViolation) -> None:
        resources = [(r.resource_type, r.props) for r in args.resources]
        for problem in check(resources):
            report(problem, None)

    return StackValidationPolicy(
        name=name,
        description=description,
        validate=validate,
        enforcement_level=level,
    )


POLICIES = [
    _resource_policy(
        "relay-far-redis-over-tls",
        "Inter-region relays: TLS to the far Redis required, its URL from a Secret.",
        {DEPLOYMENT},
        lambda _t, props: check_relay_tls(props),
    ),
    _resource_policy(
        "redis-tls-auth-multi-az",
        "ElastiCache: TLS in transit, auth token, encryption at rest, Multi-AZ, failover "
        "(a replica in every shard in cluster mode).",
        {REPLICATION_GROUP},
        lambda _t, props: check_redis(props),
    ),
    _stack_policy(
        "recovery-needs-supported-redis",
        "Connection state recovery runs only on a Redis topology the server supports it on.",
        check_recovery_redis,
    ),
    _resource_policy(
        "termination-grace-covers-drain",
        "Server pods: terminationGracePeriodSeconds > drain delay + drain seconds.",
        {DEPLOYMENT},
        lambda _t, props: check_termination_grace(props),
    ),
    _resource_policy(
        "non-root-containers",
        "Every container runs as non-root without privilege escalation.",
        set(WORKLOADS),
        check_non_root,
    ),
    _stack_policy(
        "balancer-idle-timeout",
        "Balancer idle timeouts exceed ping interval + ping timeout.",
        check_idle_timeouts,
    ),
    # Advisory: `autoscaling: none` (a fixed fleet) is a choice a stack may make.
    _stack_policy(
        "connection-count-autoscaling",
        "Server Deployments scale on iofleet_connections (HPA or the iofleet autoscaler).",
        check_connection_autoscaling,
        EnforcementLevel.ADVISORY,
    ),
    _stack_policy(
        "connection-hpa-needs-autoscaler",
        "An HPA on iofleet_connections comes with the autoscaler and its metrics APIServices.",
        check_hpa_has_metrics_source,
    ),
    _resource_policy(
        "karpenter-keeps-pod-deletion-cost",
        "Karpenter: PodDeletionCostManagement off, so the autoscaler's ranking survives.",
        {HELM_RELEASE},
        lambda _t, props: check_karpenter_deletion_cost(props),
    ),
    _resource_policy(
        "karpenter-off-its-own-nodes",
        "Karpenter's controller runs only on nodes it does not manage.",
        {HELM_RELEASE},
        lambda _t, props: check_karpenter_placement(props),
    ),
    _stack_policy(
        "headroom-below-servers",
        "Placeholder pods: own PriorityClass below the servers', preemptionPolicy Never.",
        check_headroom_priority,
    ),
    _stack_policy(
        "rolling-update-loses-nothing",
        "Server Deployments: maxSurge >= 1, maxUnavailable 0, a draining preStop, /readyz"
        " readiness and a PDB of one pod at a time.",
        check_rolling_update,
    ),
    _stack_policy(
        "admin-port-not-public",
        "The admin port is never exposed by a LoadBalancer/NodePort Service or an Ingress.",
        check_admin_private,
    ),
]


# --- surge room (issue 24) -------------------------------------------------------------

NODE_GROUP = "aws:eks/nodeGroup:NodeGroup"
# (vCPUs, memory MiB, max pods) per instance type: EC2 instance specs and the EKS AMI's
# eni-max-pods.txt (awslabs/amazon-eks-ami). Add the types your node group uses.
INSTANCE_TYPES: dict[str, tuple[int, int, int]] = {
    "t3.large": (2, 8192, 35),
    "t3.xlarge": (4, 16384, 58),
    "m6i.large": (2, 8192, 29),
    "m6i.xlarge": (4, 16384, 58),
    "m6i.2xlarge": (8, 32768, 58),
    "m7i.large": (2, 8192, 29),
    "m7i.xlarge": (4, 16384, 58),
    "m7i.2xlarge": (8, 32768, 58),
    "c6i.large": (2, 4096, 29),
    "c6i.xlarge": (4, 8192, 58),
    "c7i.large": (2, 4096, 29),
    "c7i.xlarge": (4, 8192, 58),
    "r6i.large": (2, 16384, 29),
    "r7i.large": (2, 16384, 29),
}
# Per-node DaemonSet requests of the EKS add-ons the program installs: vpc-cni (aws-node)
# 25m, kube-proxy 100m (EKS add-on defaults); neither requests memory.
DAEMONSET_CPU_M = 125.0
DAEMONSET_MEMORY_MI = 0.0
# Cluster add-on pods outside the stack's own Deployments: CoreDNS, 2 x (100m, 70Mi)
# (EKS add-on default).
ADDON_PODS: tuple[tuple[float, float], ...] = ((100.0, 70.0), (100.0, 70.0))


def allocatable(instance_type: str) -> tuple[float, float] | None:
    """(CPU millicores, memory MiB) a node of this type offers pods: capacity minus the
    EKS AMI's kube-reserved (CPU: 6% of the first core, 1% of the second, 0.5% of the
    next two, 0.25% of the rest; memory: 11 MiB per max pod + 255 MiB) and the 100 MiB
    hard-eviction threshold (awslabs/amazon-eks-ami, nodeadm kubelet config)."""
    spec = INSTANCE_TYPES.get(instance_type)
    if spec is None:
        return None
    cores, memory, max_pods = spec
    shares = [0.06, 0.01, 0.005, 0.005] + [0.0025] * max(cores - 4, 0)
    reserved_cpu = sum(shares[:cores]) * 1000
    reserved_memory = 11 * max_pods + 255 + 100
    return cores * 1000 - reserved_cpu, memory - reserved_memory


def _cpu_m(text: Any) -> float:
    value = str(text or "0")
    return float(value[:-1]) if value.endswith("m") else float(value) * 1000


def _memory_mi(text: Any) -> float:
    value = str(text or "0")
    units = {"Ki": 1 / 1024, "Mi": 1.0, "Gi": 1024.0, "Ti": 1024.0**2, "M": 0.95367, "G": 953.67}
    for suffix, factor in units.items():
        if value.endswith(suffix):
            return float(value[: -len(suffix)]) * factor
    return float(value) / 1024**2


def _pod_request(pod_spec: Any) -> tuple[float, float]:
    cpu = memory = 0.0
    for container in _dig(pod_spec, "containers") or []:
        requests = _dig(container, "resources", "requests") or {}
        cpu += _cpu_m(requests.get("cpu"))
        memory += _memory_mi(requests.get("memory"))
    return cpu, memory


def _surge(replicas: int, strategy: Any) -> int:
    """Extra pods a rolling update creates: maxSurge (default 25%), rounded up."""
    value = _dig(strategy, "rollingUpdate", "maxSurge")
    text = "25%" if value is None else str(value)
    if text.endswith("%"):
        return -(-replicas * int(float(text[:-1])) // 100)
    return int(float(text))


def _fits(nodes: list[list[float]], pods: list[tuple[float, float]]) -> int:
    """First-fit decreasing: how many of `pods` (CPU m, memory Mi) find a node."""
    placed = 0
    for cpu, memory in sorted(pods, reverse=True):
        for node in nodes:
            if node[0] >= cpu and node[1] >= memory:
                node[0] -= cpu
                node[1] -= memory
                placed += 1
                break
    return placed


def check_surge_room(resources: Sequence[Resource]) -> list[str]:
    """The node group at its minimum size holds every pod of the stack plus the server
    Deployment's rolling-update surge; otherwise the surge pod stays Pending and the
    rollout (and Pulumi's await on it) hangs until its deadline."""
    groups = [props for typ, props in resources if typ == NODE_GROUP]
    servers = {name for name, _ in _server_containers(resources)}
    if not groups or not servers:
        return []
    nodes: list[list[float]] = []
    for props in groups:
        types = [str(t) for t in props.get("instanceTypes") or []]
        sizes = [a for a in map(allocatable, types) if a is not None]
        if not sizes:
            return [
                f"node group instance types {types} are not in INSTANCE_TYPES "
                "(infra/policy/rules.py): add them so surge room can be checked"
            ]
        cpu, memory = min(sizes)  # the managed group may launch any of its types
        count = int(float(_dig(props, "scalingConfig", "minSize") or 1))
        nodes += [[cpu - DAEMONSET_CPU_M, memory - DAEMONSET_MEMORY_MI] for _ in range(count)]
    pods = list(ADDON_PODS)
    needed: dict[str, int] = {}
    for typ, props in resources:
        if typ != DEPLOYMENT:
            continue
        name = str(_dig(props, "metadata", "name"))
        if _is_placeholder(_dig(props, *WORKLOADS[DEPLOYMENT])):
            # Headroom placeholders yield: a surge pod preempts one (headroom-below-servers).
            continue
        replicas = int(float(_dig(props, "spec", "replicas") or 1))
        request = _pod_request(_dig(props, *WORKLOADS[DEPLOYMENT]))
        if name in servers:
            surge = _surge(replicas, _dig(props, "spec", "strategy"))
            needed[name] = replicas + surge
            pods += [request] * (replicas + surge)
        else:
            pods += [request] * replicas
    placed = _fits(nodes, pods)
    if placed >= len(pods):
        return []
    return [
        f"{len(nodes)} node(s) at node_min fit {placed} of the {len(pods)} pods a rollout "
        f"of {', '.join(f'{n} ({k} pods with surge)' for n, k in sorted(needed.items()))} "
        "needs: raise node_min/node_desired, use larger nodes or lower server_cpu"
    ]


POLICIES.append(
    _stack_policy(
        "rollout-surge-fits-nodes",
        "The node group at its minimum size holds the stack's pods plus the server surge.",
        check_surge_room,
    )
)
