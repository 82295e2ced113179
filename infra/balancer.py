"""Balancer: the public entry to the server pods, one of three kinds.

- ``alb``: an Ingress for the AWS Load Balancer Controller; the ALB's target group is
  sticky by lb_cookie and targets pod IPs gated by the pod readiness gate.
- ``nginx``: ingress-nginx behind an NLB, cookie affinity on the Ingress.
- ``haproxy``: HAProxy pods behind an NLB, configured from the repo's ``haproxy/``
  template, finding server pods through the headless Service's DNS records.

``BalancerController`` installs the controllers (before the server pods exist, so the
readiness-gate webhook sees them); ``Balancer`` creates the route once the Services do.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s

from infra.cluster import Cluster
from infra.config import Balancer as BalancerKind
from infra.config import RegionalConfig
from infra.workloads import (
    HAPROXY_LABELS,
    RESTRICTED_CONTAINER,
    RESTRICTED_POD,
    content_sha,
    meta,
)
from iofleet.render import DnsDiscovery, HaproxyOptions, Timeouts, render_haproxy
from server.contract import ADMIN_PORT, PUBLIC_PORT

# aws/eks-charts stable/aws-load-balancer-controller 3.5.0 (controller v3.5.0, 2026-08;
# "v2.5.0+ requires Kubernetes 1.22+", no upper bound). Its IAM policy is the one in
# infra/iam (docs/install/iam_policy.json at v3.5.0: the same actions).
LB_CONTROLLER_CHART = ("aws-load-balancer-controller", "3.5.0", "https://aws.github.io/eks-charts")
# kubernetes/ingress-nginx helm-chart-4.15.1 (controller v1.15.1, the last release before
# the project's retirement in March 2026): carries the CVE-2025-1974 fix (v1.11.5 /
# v1.12.1) and is e2e-tested on Kubernetes 1.31-1.35 (README, "Supported Versions").
INGRESS_NGINX_CHART = ("ingress-nginx", "4.15.1", "https://kubernetes.github.io/ingress-nginx")
INGRESS_NGINX_KUBERNETES = ("1.31", "1.32", "1.33", "1.34", "1.35")
LB_CONTROLLER_SA = "aws-load-balancer-controller"
HAPROXY = "iofleet-haproxy"
HAPROXY_PORT = 8080
HAPROXY_EXIT_MARGIN_SECONDS = 10
"""Grace beyond preStop + hard-stop-after, for the master to exit once its old workers
are stopped; with no margin the kubelet's SIGKILL races hard-stop-after."""
TLS_POLICY = "ELBSecurityPolicy-TLS13-1-2-2021-06"
IAM_POLICY = Path(__file__).parent / "iam" / "aws_load_balancer_controller.json"


@dataclass
class BalancerControllerArgs:
    kind: BalancerKind
    cluster: Cluster
    cluster_name: str
    region: str
    vpc_id: pulumi.Input[str]
    settings: RegionalConfig


class BalancerController(pulumi.ComponentResource):
    """AWS Load Balancer Controller (IRSA) for every kind - it makes the ALB or the NLB -
    plus ingress-nginx when ``kind`` is nginx."""

    releases: list[k8s.helm.v3.Release]

    def __init__(
        self, name: str, args: BalancerControllerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:balancer:BalancerController", name, None, opts)
        provider = args.cluster.provider
        role = args.cluster.irsa_role(
            f"{name}-lbc", "kube-system", LB_CONTROLLER_SA, IAM_POLICY.read_text()
        )
        chart, version, repo = LB_CONTROLLER_CHART
        lbc = k8s.helm.v3.Release(
            f"{name}-lbc",
            chart=chart,
            version=version,
            repository_opts={"repo": repo},
            namespace="kube-system",
            values={
                "clusterName": args.cluster_name,
                "region": args.region,
                "vpcId": args.vpc_id,
                "replicaCount": 2,
                # Its Service webhook fails closed (failurePolicy Fail): with both
                # replicas evicted at once no LoadBalancer Service could be written.
                "podDisruptionBudget": {"maxUnavailable": 1},
                "serviceAccount": {
                    "create": True,
                    "name": LB_CONTROLLER_SA,
                    "annotations": {"eks.amazonaws.com/role-arn": role.arn},
                },
            },
            # The controller's webhooks must answer before any Service or pod it watches.
            atomic=True,
            opts=pulumi.ResourceOptions(
                parent=self,
                provider=provider,
                # `atomic` waits for the controller's pods; on a first `up` they can only
                # schedule and get an IP once the nodes and the VPC CNI add-on exist.
                depends_on=args.cluster.ready,
            ),
        )
        self.releases = [lbc]
        if args.kind == "nginx":
            self.releases.append(self._create_ingress_nginx(name, args, lbc))
        self.register_outputs({})

    def _create_ingress_nginx(
        self, name: str, args: BalancerControllerArgs, lbc: k8s.helm.v3.Release
    ) -> k8s.helm.v3.Release:
        s = args.settings
        chart, version, repo = INGRESS_NGINX_CHART
        idle = str(s.idle_timeout_seconds)
        return k8s.helm.v3.Release(
            f"{name}-ingress-nginx",
            chart=chart,
            version=version,
            repository_opts={"repo": repo},
            namespace="ingress-nginx",
            create_namespace=True,
            values={
                "controller": {
                    "replicaCount": 2,
                    "ingressClassResource": {"name": "nginx", "default": False},
                    # The admission webhook is what CVE-2025-1974 reached (unauthenticated,
                    # from any pod). It only validates Ingress objects, and the one Ingress
                    # here is the program's own (validated offline by the tests): off.
                    "admissionWebhooks": {"enabled": False},
                    # No configuration snippets from Ingress annotations (the CVE's other
                    # half); the chart's default, stated so an upgrade cannot flip it.
                    "allowSnippetAnnotations": False,
                    "config": {
                        # Above ping interval + ping timeout: see idle_timeout_seconds.
                        "proxy-read-timeout": idle,
                        "proxy-send-timeout": idle,
                        # A reload keeps old workers serving WebSockets for the drain window.
                        "worker-shutdown-timeout": f"{s.deregistration_delay_seconds}s",
                        "use-forwarded-headers": "false",
                    },
                    "service": {
                        "annotations": nlb_annotations(s),
                        # TLS ends at the NLB; without a certificate there is no TLS
                        # listener, so no 443 at all (not 443 as plain TCP).
                        "enableHttps": bool(s.certificate_arn),
                        "targetPorts": {"http": "http", "https": "http"},
                    },
                },
            },
            opts=pulumi.ResourceOptions(
                parent=self, provider=args.cluster.provider, depends_on=[lbc]
            ),
        )


def lb_name(settings: RegionalConfig) -> str:
    """Deterministic balancer name (<= 32 chars) so the stack can look the LB up."""
    return f"{settings.name}-pub"[:32]


def lb_tags(settings: RegionalConfig) -> dict[str, str]:
    return {"iofleet-stack": settings.stack, "iofleet-role": "public"}


def nlb_annotations(settings: RegionalConfig) -> dict[str, str]:
    """An internet-facing NLB made by the AWS LB controller, targeting pod IPs."""
    prefix = "service.beta.kubernetes.io/aws-load-balancer"
    notes = {
        f"{prefix}-type": "external",
        f"{prefix}-nlb-target-type": "ip",
        f"{prefix}-scheme": "internet-facing",
        f"{prefix}-name": lb_name(settings),
        f"{prefix}-additional-resource-tags": ",".join(
            f"{k}={v}" for k, v in lb_tags(settings).items()
        ),
        # A balancer pod leaving keeps its connections for the servers' drain window.
        f"{prefix}-target-group-attributes": (
            f"deregistration_delay.timeout_seconds={settings.deregistration_delay_seconds},"
            "preserve_client_ip.enabled=true"
        ),
        f"{prefix}-healthcheck-protocol": "tcp",
    }
    if settings.certificate_arn:
        notes[f"{prefix}-ssl-cert"] = settings.certificate_arn
        notes[f"{prefix}-ssl-ports"] = "443"
        notes[f"{prefix}-ssl-negotiation-policy"] = TLS_POLICY
    return notes


def alb_annotations(settings: RegionalConfig) -> dict[str, str]:
    """Ingress annotations that make the ALB fit Socket.IO."""
    prefix = "alb.ingress.kubernetes.io"
    listen: list[dict[str, int]] = [{"HTTP": 80}]
    notes = {
        f"{prefix}/scheme": "internet-facing",
        f"{prefix}/load-balancer-name": lb_name(settings),
        f"{prefix}/tags": ",".join(f"{k}={v}" for k, v in lb_tags(settings).items()),
        # Pod IPs as targets: with the readiness gate a pod is Ready only once the ALB
        # sees it healthy, so a rollout never outruns target registration.
        f"{prefix}/target-type": "ip",
        # Idle timeout above ping interval + ping timeout, so quiet WebSockets survive.
        f"{prefix}/load-balancer-attributes": (
            f"idle_timeout.timeout_seconds={settings.idle_timeout_seconds},"
            "routing.http2.enabled=true,routing.http.drop_invalid_header_fields.enabled=true"
        ),
        f"{prefix}/target-group-attributes": ",".join(
            [
                # Polling requests of one session must reach the pod holding its sid.
                "stickiness.enabled=true",
                "stickiness.type=lb_cookie",
                "stickiness.lb_cookie.duration_seconds=86400",
                # A draining pod keeps its open connections for the whole drain.
                f"deregistration_delay.timeout_seconds={settings.deregistration_delay_seconds}",
            ]
        ),
        # Health on the public port (the admin port is never reachable from the ALB);
        # the demo page answers 200 while the pod runs, /readyz gates it via readiness.
        f"{prefix}/healthcheck-path": "/",
        f"{prefix}/healthcheck-interval-seconds": "10",
        f"{prefix}/healthy-threshold-count": "2",
        f"{prefix}/unhealthy-threshold-count": "2",
        f"{prefix}/success-codes": "200-399",
    }
    if settings.certificate_arn:
        listen.append({"HTTPS": 443})
        notes[f"{prefix}/certificate-arn"] = settings.certificate_arn
        notes[f"{prefix}/ssl-policy"] = TLS_POLICY
        notes[f"{prefix}/ssl-redirect"] = "443"
    notes[f"{prefix}/listen-ports"] = json.dumps(listen)
    return notes


def nginx_annotations(settings: RegionalConfig) -> dict[str, str]:
    prefix = "nginx.ingress.kubernetes.io"
    idle = str(settings.idle_timeout_seconds)
    return {
        # ingress-nginx's own cookie: set on the first response (the polling handshake),
        # so every later request of that session carries it. Unlike `hash $cookie_io`,
        # it needs no cookie on the very first request.
        f"{prefix}/affinity": "cookie",
        f"{prefix}/affinity-mode": "persistent",
        f"{prefix}/session-cookie-name": "iofleet_node",
        f"{prefix}/session-cookie-max-age": "86400",
        f"{prefix}/session-cookie-samesite": "Lax",
        f"{prefix}/proxy-read-timeout": idle,
        f"{prefix}/proxy-send-timeout": idle,
        f"{prefix}/proxy-body-size": f"{settings.max_message_bytes * 2}",
    }


@dataclass
class BalancerArgs:
    settings: RegionalConfig
    provider: k8s.Provider
    namespace: str
    public_service: str
    headless_service: str
    depends_on: list[pulumi.Resource]


class Balancer(pulumi.ComponentResource):
    """The public route to the server pods, and the AWS load balancer it produced."""

    hostname: pulumi.Output[str]
    lb_arn: pulumi.Output[str]
    lb_arn_suffix: pulumi.Output[str]
    lb_zone_id: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    lb_type: str
    """"application" (ALB) or "network" (NLB in front of nginx or HAProxy)."""
    route: list[pulumi.Resource]
    """The Ingress or LoadBalancer Service: the server pods are created after it."""

    def __init__(
        self, name: str, args: BalancerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:balancer:Balancer", name, None, opts)
        self._args = args
        self._opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        kind = args.settings.balancer
        if kind == "haproxy":
            self.lb_type = "network"
            self.hostname = self._create_haproxy(name)
        else:
            self.lb_type = "application" if kind == "alb" else "network"
            self.hostname = self._create_ingress(name, kind)
        self._lookup()
        self.register_outputs({"hostname": self.hostname})

    def _create_ingress(self, name: str, kind: BalancerKind) -> pulumi.Output[str]:
        s = self._args.settings
        notes = alb_annotations(s) if kind == "alb" else nginx_annotations(s)
        backend = {"service": {"name": self._args.public_service, "port": {"name": "http"}}}
        spec: dict[str, Any] = {"ingressClassName": kind}
        if kind == "alb":
            # The default backend becomes the listener's default action (forward to the
            # one target group), which is how _lookup finds the target group by port.
            spec["defaultBackend"] = backend
        else:
            spec["rules"] = [
                {"http": {"paths": [{"path": "/", "pathType": "Prefix", "backend": backend}]}}
            ]
        ingress = k8s.networking.v1.Ingress(
            f"{name}-ingress",
            metadata={**meta("iofleet", self._args.namespace, {}), "annotations": notes},
            spec=spec,
            opts=self._opts,
        )
        self.route = [ingress]
        hostname: pulumi.Output[str] = ingress.status.apply(_hostname)
        return hostname

    def _create_haproxy(self, name: str) -> pulumi.Output[str]:
        s = self._args.settings
        ns = self._args.namespace
        config = haproxy_config(s, f"{self._args.headless_service}.{ns}.svc.cluster.local")
        config_map = k8s.core.v1.ConfigMap(
            f"{name}-haproxy-config",
            metadata=meta(HAPROXY, ns, HAPROXY_LABELS),
            data={"haproxy.cfg": config},
            opts=self._opts,
        )
        # Keep serving while the NLB deregisters this pod, then stop.
        prestop = max(s.drain_delay, 5)
        pod_spec: dict[str, Any] = {
            "securityContext": {**RESTRICTED_POD, "runAsUser": 99, "runAsGroup": 99, "fsGroup": 99},
            # preStop, then SIGUSR1 (soft stop) lets WebSockets finish until
            # hard-stop-after (the drain window), then a margin to exit.
            "terminationGracePeriodSeconds": prestop
            + s.deregistration_delay_seconds
            + HAPROXY_EXIT_MARGIN_SECONDS,
            "topologySpreadConstraints": [
                {
                    "maxSkew": 1,
                    "topologyKey": "topology.kubernetes.io/zone",
                    "whenUnsatisfiable": "ScheduleAnyway",
                    "labelSelector": {"matchLabels": HAPROXY_LABELS},
                }
            ],
            "containers": [
                {
                    "name": "haproxy",
                    "image": s.haproxy_image,
                    "args": ["-f", "/usr/local/etc/haproxy/haproxy.cfg"],
                    "ports": [{"name": "http", "containerPort": HAPROXY_PORT}],
                    "lifecycle": {"preStop": {"sleep": {"seconds": prestop}}},
                    "readinessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 5},
                    "livenessProbe": {"tcpSocket": {"port": "http"}, "periodSeconds": 10},
                    "resources": {
                        "requests": {"cpu": "500m", "memory": "256Mi"},
                        "limits": {"memory": "512Mi"},
                    },
                    # The official image runs as the haproxy user (uid 99).
                    "securityContext": {
                        **RESTRICTED_CONTAINER,
                        "runAsUser": 99,
                        "runAsGroup": 99,
                    },
                    "volumeMounts": [
                        {"name": "config", "mountPath": "/usr/local/etc/haproxy", "readOnly": True},
                        {"name": "run", "mountPath": "/var/run"},
                        {"name": "tmp", "mountPath": "/tmp"},
                    ],
                }
            ],
            "volumes": [
                {"name": "config", "configMap": {"name": HAPROXY}},
                {"name": "run", "emptyDir": {"sizeLimit": "8Mi"}},
                {"name": "tmp", "emptyDir": {"sizeLimit": "8Mi"}},
            ],
        }
        k8s.apps.v1.Deployment(
            f"{name}-haproxy",
            metadata=meta(HAPROXY, ns, HAPROXY_LABELS),
            spec={
                "replicas": 2,
                "selector": {"matchLabels": HAPROXY_LABELS},
                "template": {
                    # A config change rolls the pods (the ConfigMap name is stable).
                    "metadata": {
                        "labels": HAPROXY_LABELS,
                        "annotations": {"iofleet.io/config-sha": content_sha(config)},
                    },
                    "spec": pod_spec,
                },
            },
            opts=pulumi.ResourceOptions.merge(
                self._opts, pulumi.ResourceOptions(depends_on=[config_map])
            ),
        )
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-haproxy-pdb",
            metadata=meta(HAPROXY, ns, HAPROXY_LABELS),
            spec={"maxUnavailable": 1, "selector": {"matchLabels": HAPROXY_LABELS}},
            opts=self._opts,
        )
        ports = [{"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}]
        if s.certificate_arn:
            ports.append({"name": "https", "port": 443, "targetPort": "http", "protocol": "TCP"})
        service = k8s.core.v1.Service(
            f"{name}-haproxy-svc",
            metadata={**meta(HAPROXY, ns, HAPROXY_LABELS), "annotations": nlb_annotations(s)},
            spec={
                "type": "LoadBalancer",
                "loadBalancerClass": "service.k8s.aws/nlb",
                "externalTrafficPolicy": "Local",
                "selector": HAPROXY_LABELS,
                "ports": ports,
            },
            opts=self._opts,
        )
        self.route = [service]
        hostname: pulumi.Output[str] = service.status.apply(_hostname)
        return hostname

    def _lookup(self) -> None:
        """Read the balancer the controller made (by its fixed name) once it exists, and
        its target group by listener port, for the alarms and the global stack.

        Not by tags: the controller makes one target group per listener port (ingress-nginx
        serves 80 and 443, HAProxy 443 too with a certificate), and aws.lb.getTargetGroup
        fails unless exactly one matches."""
        s = self._args.settings
        name = lb_name(s)
        # The listener that forwards: with TLS on an ALB, 80 only redirects to 443.
        port = 443 if s.certificate_arn and s.balancer == "alb" else 80
        invoke = pulumi.InvokeOptions(parent=self)
        lb = self.hostname.apply(lambda _: aws.lb.get_load_balancer(name=name, opts=invoke))
        listener = lb.apply(
            lambda r: aws.lb.get_listener(load_balancer_arn=r.arn, port=port, opts=invoke)
        )
        self.lb_arn = lb.apply(lambda r: r.arn)
        self.lb_arn_suffix = lb.apply(lambda r: r.arn_suffix)
        self.lb_zone_id = lb.apply(lambda r: r.zone_id)
        self.target_group_arn_suffix = listener.apply(_target_group_suffix)


def haproxy_config(settings: RegionalConfig, headless_fqdn: str) -> str:
    """The in-cluster HAProxy config from the repo's template (iofleet.render)."""
    options = HaproxyOptions(
        listen=f":{HAPROXY_PORT}",
        discovery=DnsDiscovery(
            hostname=headless_fqdn,
            port=PUBLIC_PORT,
            admin_port=ADMIN_PORT,
            # One slot per pod the HPA may run.
            slots=settings.max_replicas,
            cookie_key=settings.stack,
        ),
        stickiness="cookie",
        # No runtime socket in the cluster: Kubernetes readiness is the drain lever here.
        admin_socket=None,
        log="stdout",
        timeouts=Timeouts(
            ping_interval_s=settings.ping_interval,
            ping_timeout_s=settings.ping_timeout,
            drain_s=settings.deregistration_delay_seconds,
        ),
    )
    return render_haproxy(options)


def _hostname(status: Any) -> str:
    """The balancer's DNS name from an Ingress's or a LoadBalancer Service's status."""
    return str(status.load_balancer.ingress[0].hostname or "")


def _target_group_suffix(listener: Any) -> str:
    """The CloudWatch TargetGroup dimension (targetgroup/<name>/<id>) of the group the
    listener's default action forwards to."""
    for action in listener.default_actions:
        arn = action.target_group_arn or next(
            (g.arn for f in action.forwards or [] for g in f.target_groups or []), ""
        )
        if arn:
            return str(arn).split(":", 5)[5]
    raise ValueError(f"listener {listener.arn} does not forward to a target group")
