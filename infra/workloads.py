"""Workloads: the socket server (SocketService) and the connection-count autoscaler
(Autoscaler). Specs are written as camelCase dicts so they read like the manifests a
platform team would review with kubectl."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pulumi
import pulumi_kubernetes as k8s
import pulumi_random as random

from infra.config import RegionalConfig
from server.contract import ADMIN_PORT, CONNECTIONS_METRIC, PUBLIC_PORT

SERVER = "iofleet-server"
AUTOSCALER = "iofleet-autoscaler"
METRICS_API_PORT = 6443
CUSTOM_METRICS_GROUP = "custom.metrics.k8s.io"
# Services made before their pods exist: Pulumi's Service await would wait for ready
# endpoints that only the later Deployment brings (pulumi-kubernetes Service docs).
NO_AWAIT = {"pulumi.com/skipAwait": "true"}
SERVER_LABELS = {"app.kubernetes.io/name": SERVER, "app.kubernetes.io/part-of": "iofleet"}
AUTOSCALER_LABELS = {"app.kubernetes.io/name": AUTOSCALER, "app.kubernetes.io/part-of": "iofleet"}
HAPROXY_LABELS = {
    "app.kubernetes.io/name": "iofleet-haproxy",
    "app.kubernetes.io/part-of": "iofleet",
}
UID = 10001
# cert-manager/cert-manager v1.21.1 (chart cert-manager v1.21.1, charts.jetstack.io):
# issues and renews the autoscaler's serving certificate in the cluster, and its
# cainjector writes the CA into the APIServices' caBundle.
CERT_MANAGER_CHART = ("cert-manager", "v1.21.1", "https://charts.jetstack.io")
CERT_MANAGER_NAMESPACE = "cert-manager"
TLS_DIR = "/etc/iofleet/tls"
# The autoscaler reads its certificate once at start; cert-manager renews it 30 days
# before expiry and the kubelet updates the mounted file. The liveness check restarts
# the container when the certificate it serves is no longer the mounted one (and when
# /healthz fails), so a renewal takes effect within a few probe periods.
AUTOSCALER_LIVENESS = (
    "import ssl, sys, urllib.request as r; "
    "c = ssl.create_default_context(); c.check_hostname = False; c.verify_mode = ssl.CERT_NONE; "
    "r.urlopen('https://127.0.0.1:{port}/healthz', context=c, timeout=2); "
    "served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(('127.0.0.1', {port}))); "
    "end = '-----END CERTIFICATE-----'; "
    "mounted = open('{tls_dir}/tls.crt').read().split(end)[0] + end + chr(10); "
    "sys.exit(served != ssl.PEM_cert_to_DER_cert(mounted))"
)

# The preStop hook: ask the server to drain and block until it is done, so Kubernetes
# sends SIGTERM only to an empty process. Plain python (the image has no curl). If the
# call fails the kubelet goes on to SIGTERM, which starts the same drain.
PRESTOP = (
    "import os, urllib.request as r; "
    "r.urlopen(r.Request('http://127.0.0.1:{port}/admin/drain?wait=true', method='POST', "
    "headers={{'Authorization': 'Bearer ' + os.environ['IOFLEET_ADMIN_TOKEN']}}), "
    "timeout={timeout})"
)

RESTRICTED_CONTAINER: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "allowPrivilegeEscalation": False,
    "readOnlyRootFilesystem": True,
    "capabilities": {"drop": ["ALL"]},
    "seccompProfile": {"type": "RuntimeDefault"},
}
RESTRICTED_POD: dict[str, Any] = {
    "runAsNonRoot": True,
    "runAsUser": UID,
    "runAsGroup": UID,
    "fsGroup": UID,
    "seccompProfile": {"type": "RuntimeDefault"},
}


def content_sha(text: str) -> str:
    """A short digest for a pod-template annotation: a change of what it digests rolls
    the pods (ConfigMap and Secret names stay stable)."""
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def secret_sha(data: Mapping[str, pulumi.Input[str]]) -> pulumi.Output[str]:
    """The pod-template annotation value for a Secret's data (keys sorted, then values):
    pods that read a Secret as environment variables see a rotated value only through a
    rollout, which a change of this digest triggers. The digest, never a value, shows."""
    keys = sorted(data)
    return pulumi.Output.all(*(data[k] for k in keys)).apply(
        lambda values: content_sha("\n".join(f"{k}={v}" for k, v in zip(keys, values, strict=True)))
    )


def meta(name: str, namespace: str, labels: dict[str, str]) -> dict[str, Any]:
    return {"name": name, "namespace": namespace, "labels": labels}


@dataclass
class SocketServiceArgs:
    settings: RegionalConfig
    redis_url: pulumi.Output[str]
    jwt_secret: pulumi.Output[str] | None
    """HS256 secret; None when settings.jwt_public_key is used."""
    jwt_secret_previous: pulumi.Output[str] | None
    """HS256 secret still accepted during a rotation window; None outside one."""
    provider: k8s.Provider
    alb_readiness_gate: bool
    """Label the namespace so the AWS LB controller injects target-health readiness gates."""
    admin_clients: list[dict[str, Any]]
    """NetworkPolicy peers (besides autoscaler and Prometheus) allowed on the admin port."""
    depends_on: list[pulumi.Resource]


class SocketService(pulumi.ComponentResource):
    """Namespace, Secret, Deployment, PDB, Services, HPA and NetworkPolicy of the server.

    Two steps: the constructor makes everything a balancer route needs (namespace,
    Services); ``create_deployment`` makes the pods once the route exists, because the
    AWS LB controller injects its readiness gate only into pods created after the
    TargetGroupBinding of their Service (aws-load-balancer-controller, pod_readiness_gate).
    """

    namespace: str
    public_service: str
    headless_service: str
    admin_service: str
    deployment_name: str

    def __init__(
        self, name: str, args: SocketServiceArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:workloads:SocketService", name, None, opts)
        self._args = args
        s = args.settings
        self.namespace = s.namespace
        self.deployment_name = SERVER
        self.public_service = SERVER
        self.headless_service = f"{SERVER}-headless"
        self.admin_service = f"{SERVER}-admin"
        self.admin_service_labels = {**SERVER_LABELS, "iofleet.io/port": "admin"}

        labels = {
            # Pods run under the "restricted" Pod Security Standard.
            "pod-security.kubernetes.io/enforce": "restricted",
            "pod-security.kubernetes.io/enforce-version": "latest",
        }
        if args.alb_readiness_gate:
            labels["elbv2.k8s.aws/pod-readiness-gate-inject"] = "enabled"
        self._ns = k8s.core.v1.Namespace(
            f"{name}-ns",
            metadata={"name": s.namespace, "labels": labels},
            opts=pulumi.ResourceOptions(parent=self, provider=args.provider),
        )
        self._ns_opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=[self._ns]
        )
        self.admin_token = self._admin_token(name)
        self._name = name
        self._create_secret(name)
        self._account = self._service_account(name)
        self.services = self._create_services(name)
        self.route_needs: list[pulumi.Resource] = [self._ns, *self.services]
        """What a balancer route depends on (not the component: its pods come later)."""
        self._create_pdb(name)
        self._create_network_policy(name)

    def create_deployment(self, after: list[pulumi.Resource]) -> None:
        """The Deployment (and its HPA in `hpa` mode), created after ``after`` - the
        balancer's route - so the first pods already get the ALB readiness gate."""
        self.deployment = self._create_deployment(self._name, after)
        if self._args.settings.autoscaling == "hpa":
            self._create_hpa(self._name)
        self.register_outputs({"namespace": self.namespace})

    def _admin_token(self, name: str) -> pulumi.Output[str]:
        """The operator's token if set (a rotation sets a new one), else a generated one."""
        given = self._args.settings.admin_token.get_secret_value()
        if given:
            return pulumi.Output.secret(given)
        return random.RandomPassword(
            f"{name}-admin-token",
            length=48,
            special=False,
            opts=pulumi.ResourceOptions(parent=self),
        ).result

    def _create_secret(self, name: str) -> None:
        s = self._args.settings
        data: dict[str, pulumi.Input[str]] = {
            "redis-url": self._args.redis_url,
            "admin-token": self.admin_token,
        }
        if s.admin_token_previous.get_secret_value():
            data["admin-token-previous"] = pulumi.Output.secret(
                s.admin_token_previous.get_secret_value()
            )
        if self._args.jwt_secret is not None:
            data["jwt-secret"] = self._args.jwt_secret
        if self._args.jwt_secret_previous is not None:
            data["jwt-secret-previous"] = self._args.jwt_secret_previous
        # A rotated admin token, JWT secret or Redis AUTH token rolls the pods.
        self.secret_sha = secret_sha(data)
        self.secret = k8s.core.v1.Secret(
            f"{name}-secret",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            type="Opaque",
            string_data=data,
            opts=self._ns_opts,
        )

    def _env(self) -> list[dict[str, Any]]:
        s = self._args.settings

        def secret(var: str, key: str) -> dict[str, Any]:
            return {"name": var, "valueFrom": {"secretKeyRef": {"name": SERVER, "key": key}}}

        plain = {
            "IOFLEET_HOST": "0.0.0.0",
            "IOFLEET_PORT": PUBLIC_PORT,
            "IOFLEET_ADMIN_PORT": ADMIN_PORT,
            "IOFLEET_AUTH": "jwt",
            # Behind our balancer: client addresses come from X-Forwarded-For.
            "IOFLEET_TRUST_PROXY_HEADERS": "true",
            "IOFLEET_CORS_ORIGINS": ",".join(s.cors_origins),
            "IOFLEET_TRANSPORTS": ",".join(s.transports),
            "IOFLEET_PING_INTERVAL": s.ping_interval,
            "IOFLEET_PING_TIMEOUT": s.ping_timeout,
            "IOFLEET_MAX_CONNECTIONS": s.max_connections,
            "IOFLEET_MAX_MESSAGE_BYTES": s.max_message_bytes,
            "IOFLEET_RATE_LIMIT": s.rate_limit,
            "IOFLEET_DRAIN_SECONDS": s.drain_seconds,
            "IOFLEET_DRAIN_DELAY": s.drain_delay,
            "IOFLEET_RECOVERY": str(s.recovery).lower(),
        }
        if s.recovery:
            plain["IOFLEET_RECOVERY_WINDOW_SECONDS"] = s.recovery_window_seconds
            plain["IOFLEET_RECOVERY_MAX_MESSAGES"] = s.recovery_max_messages
        if s.handlers:
            plain["IOFLEET_HANDLERS"] = s.handlers
        if s.jwt_public_key:
            plain["IOFLEET_JWT_PUBLIC_KEY"] = s.jwt_public_key
        if s.jwt_public_key_previous:
            plain["IOFLEET_JWT_PUBLIC_KEY_PREVIOUS"] = s.jwt_public_key_previous
        env: list[dict[str, Any]] = [{"name": k, "value": str(v)} for k, v in plain.items()]
        env.append(
            # Each pod's node id is its name: logs, metrics and /admin/status line up.
            {"name": "IOFLEET_NODE_ID", "valueFrom": {"fieldRef": {"fieldPath": "metadata.name"}}}
        )
        env.append(secret("IOFLEET_REDIS_URL", "redis-url"))
        env.append(secret("IOFLEET_ADMIN_TOKEN", "admin-token"))
        if s.admin_token_previous.get_secret_value():
            env.append(secret("IOFLEET_ADMIN_TOKEN_PREVIOUS", "admin-token-previous"))
        if self._args.jwt_secret is not None:
            env.append(secret("IOFLEET_JWT_SECRET", "jwt-secret"))
        if self._args.jwt_secret_previous is not None:
            env.append(secret("IOFLEET_JWT_SECRET_PREVIOUS", "jwt-secret-previous"))
        return env

    def _container(self) -> dict[str, Any]:
        s = self._args.settings
        drain_timeout = s.drain_delay + s.drain_seconds + 5
        return {
            "name": "server",
            "image": s.image,
            "command": ["python", "-m", "server"],
            "ports": [
                {"name": "http", "containerPort": PUBLIC_PORT, "protocol": "TCP"},
                {"name": "admin", "containerPort": ADMIN_PORT, "protocol": "TCP"},
            ],
            "env": self._env(),
            # No CPU limit: CFS throttling stalls the event loop and every socket on it;
            # the request reserves the share, memory is capped (requests == limits).
            "resources": {
                "requests": {"cpu": s.server_cpu, "memory": s.server_memory},
                "limits": {"memory": s.server_memory},
            },
            "startupProbe": {
                "httpGet": {"path": "/healthz", "port": "admin"},
                "periodSeconds": 2,
                "failureThreshold": 30,
            },
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "admin"},
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            },
            # /readyz turns 503 the moment a drain starts, taking the pod out of the
            # Service endpoints (and the balancer) before connections are closed.
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "admin"},
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": 1,
                "successThreshold": 1,
            },
            "lifecycle": {
                "preStop": {
                    "exec": {
                        "command": [
                            "python",
                            "-c",
                            PRESTOP.format(port=ADMIN_PORT, timeout=drain_timeout),
                        ]
                    }
                }
            },
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}],
        }

    def _create_deployment(self, name: str, after: list[pulumi.Resource]) -> k8s.apps.v1.Deployment:
        s = self._args.settings
        return k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            spec={
                # Initial size only: the HPA owns replicas afterwards (ignore_changes).
                "replicas": s.min_replicas,
                "selector": {"matchLabels": SERVER_LABELS},
                # Surge, never remove first: a rollout adds capacity before draining.
                "strategy": {
                    "type": "RollingUpdate",
                    "rollingUpdate": {"maxSurge": "25%", "maxUnavailable": 0},
                },
                "template": {
                    "metadata": {
                        "labels": SERVER_LABELS,
                        "annotations": {"iofleet.io/secret-sha": self.secret_sha},
                    },
                    "spec": {
                        "serviceAccountName": SERVER,
                        "automountServiceAccountToken": False,
                        "terminationGracePeriodSeconds": s.termination_grace_seconds,
                        "securityContext": RESTRICTED_POD,
                        "topologySpreadConstraints": [
                            {
                                "maxSkew": 1,
                                "topologyKey": "topology.kubernetes.io/zone",
                                "whenUnsatisfiable": "DoNotSchedule",
                                "labelSelector": {"matchLabels": SERVER_LABELS},
                            },
                            {
                                "maxSkew": 1,
                                "topologyKey": "kubernetes.io/hostname",
                                "whenUnsatisfiable": "ScheduleAnyway",
                                "labelSelector": {"matchLabels": SERVER_LABELS},
                            },
                        ],
                        "containers": [self._container()],
                        "volumes": [
                            {"name": "tmp", "emptyDir": {"medium": "Memory", "sizeLimit": "64Mi"}}
                        ],
                    },
                },
            },
            opts=pulumi.ResourceOptions.merge(
                self._ns_opts,
                pulumi.ResourceOptions(
                    depends_on=[self.secret, self._account, *self._args.depends_on, *after],
                    ignore_changes=["spec.replicas"],
                ),
            ),
        )

    def _service_account(self, name: str) -> k8s.core.v1.ServiceAccount:
        return k8s.core.v1.ServiceAccount(
            f"{name}-sa",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            # The server never calls the Kubernetes API.
            automount_service_account_token=False,
            opts=self._ns_opts,
        )

    def _create_services(self, name: str) -> list[k8s.core.v1.Service]:
        public = {"name": "http", "port": 80, "targetPort": "http", "protocol": "TCP"}
        public_service = k8s.core.v1.Service(
            f"{name}-public",
            metadata={
                **meta(self.public_service, self.namespace, SERVER_LABELS),
                "annotations": NO_AWAIT,
            },
            spec={"type": "ClusterIP", "selector": SERVER_LABELS, "ports": [public]},
            opts=self._ns_opts,
        )
        # Headless: one DNS A record per pod, for HAProxy's server-template. Not-ready
        # pods stay in DNS on purpose: HAProxy checks /readyz itself, and a draining pod
        # that vanished from DNS would lose its HAProxy slot, cutting its polling
        # sessions at once instead of letting the paced drain close them.
        headless = k8s.core.v1.Service(
            f"{name}-headless",
            metadata=meta(self.headless_service, self.namespace, SERVER_LABELS),
            spec={
                "clusterIP": "None",
                "publishNotReadyAddresses": True,
                "selector": SERVER_LABELS,
                "ports": [
                    {"name": "http", "port": PUBLIC_PORT, "targetPort": "http"},
                    {"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"},
                ],
            },
            opts=self._ns_opts,
        )
        # Admin: cluster-internal only (ClusterIP, never referenced by an Ingress).
        admin = k8s.core.v1.Service(
            f"{name}-admin",
            metadata={
                **meta(self.admin_service, self.namespace, self.admin_service_labels),
                "annotations": NO_AWAIT,
            },
            spec={
                "type": "ClusterIP",
                "selector": SERVER_LABELS,
                "ports": [{"name": "admin", "port": ADMIN_PORT, "targetPort": "admin"}],
            },
            opts=self._ns_opts,
        )
        return [public_service, headless, admin]

    def _create_pdb(self, name: str) -> None:
        k8s.policy.v1.PodDisruptionBudget(
            f"{name}-pdb",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            # One pod at a time: each eviction sends its users to reconnect elsewhere,
            # so node drains move load gradually instead of in a thundering herd.
            spec={"maxUnavailable": 1, "selector": {"matchLabels": SERVER_LABELS}},
            opts=self._ns_opts,
        )

    def _create_hpa(self, name: str) -> k8s.autoscaling.v2.HorizontalPodAutoscaler:
        s = self._args.settings
        return k8s.autoscaling.v2.HorizontalPodAutoscaler(
            f"{name}-hpa",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            spec={
                "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": SERVER},
                "minReplicas": s.min_replicas,
                "maxReplicas": s.max_replicas,
                "metrics": [
                    {
                        "type": "Pods",
                        "pods": {
                            "metric": {"name": CONNECTIONS_METRIC},
                            "target": {
                                "type": "AverageValue",
                                "averageValue": str(s.target_connections),
                            },
                        },
                    }
                ],
                "behavior": hpa_behavior(s),
            },
            opts=pulumi.ResourceOptions.merge(
                self._ns_opts, pulumi.ResourceOptions(depends_on=[self.deployment])
            ),
        )

    def _create_network_policy(self, name: str) -> None:
        s = self._args.settings
        admin_peers = [
            {"podSelector": {"matchLabels": AUTOSCALER_LABELS}},
            {
                "namespaceSelector": {
                    "matchLabels": {"kubernetes.io/metadata.name": s.prometheus_namespace}
                }
            },
            *self._args.admin_clients,
        ]
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta(SERVER, self.namespace, SERVER_LABELS),
            spec={
                "podSelector": {"matchLabels": SERVER_LABELS},
                "policyTypes": ["Ingress"],
                # Kubelet probes come from the node and are not subject to this policy.
                "ingress": [
                    {"ports": [{"port": "http", "protocol": "TCP"}]},
                    {"from": admin_peers, "ports": [{"port": "admin", "protocol": "TCP"}]},
                ],
            },
            opts=self._ns_opts,
        )


@dataclass
class AutoscalerArgs:
    settings: RegionalConfig
    provider: k8s.Provider
    deployment_name: str
    namespace: str
    depends_on: list[pulumi.Resource]


def hpa_behavior(s: RegionalConfig) -> dict[str, Any]:
    """The HPA's `behavior`, from the stack config; the autoscaler's direct mode gets
    the same rules (`autoscaler_behavior_env`), so both modes scale alike."""
    return {
        "scaleUp": {
            "stabilizationWindowSeconds": s.scale_up_stabilization_seconds,
            "selectPolicy": "Max",
            "policies": [
                {"type": "Percent", "value": s.scale_up_percent, "periodSeconds": 60},
                {"type": "Pods", "value": 2, "periodSeconds": 60},
            ],
        },
        # Every removed pod pushes its users through a reconnect: go slowly.
        "scaleDown": {
            "stabilizationWindowSeconds": s.scale_down_stabilization_seconds,
            "selectPolicy": "Min",
            "policies": [{"type": "Percent", "value": s.scale_down_percent, "periodSeconds": 60}],
        },
    }


def autoscaler_behavior_env(behavior: dict[str, Any]) -> dict[str, str]:
    """`behavior` as the autoscaler's `IOFLEET_AUTOSCALER_SCALE_*` settings."""
    env: dict[str, str] = {}
    for direction, prefix in (("scaleUp", "SCALE_UP"), ("scaleDown", "SCALE_DOWN")):
        rules = behavior[direction]
        key = f"IOFLEET_AUTOSCALER_{prefix}"
        env[f"{key}_STABILIZATION_SECONDS"] = str(rules["stabilizationWindowSeconds"])
        env[f"{key}_SELECT_POLICY"] = rules["selectPolicy"]
        periods = {policy["periodSeconds"] for policy in rules["policies"]}
        if len(periods) != 1:  # the autoscaler's settings hold one period per direction
            raise ValueError(f"{direction}: policies must share one period, got {periods}")
        env[f"{key}_PERIOD_SECONDS"] = str(periods.pop())
        for policy in rules["policies"]:
            env[f"{key}_{policy['type'].upper()}"] = str(policy["value"])
    return env


class Autoscaler(pulumi.ComponentResource):
    """The connection-count autoscaler, in the stack's `autoscaling` mode:

    - `hpa`: serves custom.metrics.k8s.io (APIServices v1beta1/v1beta2) so the HPA scales
      on iofleet_connections, and keeps pod-deletion-cost on the server pods;
    - `direct`: no HPA; the autoscaler owns the replica count through the Deployment's
      scale subresource (the only mode granted that write, so two scalers never fight).

    Least-privilege RBAC, TLS serving cert (its probes are HTTPS too)."""

    def __init__(
        self, name: str, args: AutoscalerArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:workloads:Autoscaler", name, None, opts)
        self._args = args
        self._ns = args.namespace
        self._opts = pulumi.ResourceOptions(
            parent=self, provider=args.provider, depends_on=args.depends_on
        )
        self._create_rbac(name)
        certificate = self._create_tls(name)
        deployment = self._create_deployment(name, certificate)
        self._create_service(name)
        if args.settings.autoscaling == "hpa":
            # After the autoscaler is ready: an APIService without a live backend makes
            # every discovery call (kubectl, Helm) warn and the HPA go blind.
            self._create_api_services(name, [deployment, certificate])
        self.register_outputs({})

    def _create_rbac(self, name: str) -> None:
        ns = self._ns
        sa = {"kind": "ServiceAccount", "name": AUTOSCALER, "namespace": ns}
        k8s.core.v1.ServiceAccount(
            f"{name}-sa", metadata=meta(AUTOSCALER, ns, AUTOSCALER_LABELS), opts=self._opts
        )
        rules: list[dict[str, Any]] = [
            # Read connection counts from pods, and rank them with pod-deletion-cost.
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch", "patch"]},
        ]
        if self._args.settings.autoscaling == "direct":
            rules += [
                # Only the server Deployment's scale subresource, and only in direct mode:
                # with an HPA the two would fight over the replica count.
                {
                    "apiGroups": ["apps"],
                    "resources": ["deployments/scale"],
                    "resourceNames": [self._args.deployment_name],
                    "verbs": ["get", "patch", "update"],
                },
                # To refuse to start when an HPA targets the same Deployment.
                {
                    "apiGroups": ["autoscaling"],
                    "resources": ["horizontalpodautoscalers"],
                    "verbs": ["get", "list"],
                },
            ]
        k8s.rbac.v1.Role(
            f"{name}-role",
            metadata=meta(AUTOSCALER, ns, AUTOSCALER_LABELS),
            rules=rules,
            opts=self._opts,
        )
        k8s.rbac.v1.RoleBinding(
            f"{name}-rolebinding",
            metadata=meta(AUTOSCALER, ns, AUTOSCALER_LABELS),
            role_ref={"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": AUTOSCALER},
            subjects=[sa],
            opts=self._opts,
        )
        # An aggregated API server checks callers with TokenReview/SubjectAccessReview...
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-auth-delegator",
            metadata={"name": f"{AUTOSCALER}:system:auth-delegator", "labels": AUTOSCALER_LABELS},
            role_ref={
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": "system:auth-delegator",
            },
            subjects=[sa],
            opts=self._opts,
        )
        # ...and reads the front-proxy client CA from kube-system.
        k8s.rbac.v1.RoleBinding(
            f"{name}-auth-reader",
            metadata=meta(f"{AUTOSCALER}-auth-reader", "kube-system", AUTOSCALER_LABELS),
            role_ref={
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "Role",
                "name": "extension-apiserver-authentication-reader",
            },
            subjects=[sa],
            opts=self._opts,
        )
        if self._args.settings.autoscaling != "hpa":
            return
        # The HPA controller must be allowed to read the metrics we serve.
        k8s.rbac.v1.ClusterRole(
            f"{name}-metrics-reader",
            metadata={"name": f"{AUTOSCALER}:metrics-reader", "labels": AUTOSCALER_LABELS},
            rules=[
                {
                    "apiGroups": ["custom.metrics.k8s.io"],
                    "resources": ["*"],
                    "verbs": ["get", "list", "watch"],
                }
            ],
            opts=self._opts,
        )
        k8s.rbac.v1.ClusterRoleBinding(
            f"{name}-hpa-metrics-reader",
            metadata={"name": f"{AUTOSCALER}:hpa-metrics-reader", "labels": AUTOSCALER_LABELS},
            role_ref={
                "apiGroup": "rbac.authorization.k8s.io",
                "kind": "ClusterRole",
                "name": f"{AUTOSCALER}:metrics-reader",
            },
            subjects=[
                {
                    "kind": "ServiceAccount",
                    "name": "horizontal-pod-autoscaler",
                    "namespace": "kube-system",
                }
            ],
            opts=self._opts,
        )

    def _cert_manager_object(
        self, name: str, kind: str, object_name: str, spec: dict[str, Any], after: list[Any]
    ) -> k8s.apiextensions.CustomResource:
        return k8s.apiextensions.CustomResource(
            name,
            api_version="cert-manager.io/v1",
            kind=kind,
            metadata=meta(object_name, self._ns, AUTOSCALER_LABELS),
            spec=spec,
            opts=pulumi.ResourceOptions.merge(self._opts, pulumi.ResourceOptions(depends_on=after)),
        )

    def _create_tls(self, name: str) -> k8s.apiextensions.CustomResource:
        """cert-manager (a pinned release with its CRDs), a private CA issued in the
        cluster and the serving certificate signed by it: 90 days, renewed 30 days
        before expiry without a `pulumi up`."""
        release = k8s.helm.v3.Release(
            f"{name}-cert-manager",
            chart=CERT_MANAGER_CHART[0],
            version=CERT_MANAGER_CHART[1],
            repository_opts={"repo": CERT_MANAGER_CHART[2]},
            namespace=CERT_MANAGER_NAMESPACE,
            create_namespace=True,
            # The CRDs come with the release (none exist on a new cluster); kept if the
            # release is ever uninstalled, so certificates are not deleted with it.
            values={"crds": {"enabled": True, "keep": True}},
            atomic=True,
            timeout=600,
            opts=self._opts,
        )
        key = {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"}
        self_signed = self._cert_manager_object(
            f"{name}-selfsigned",
            "Issuer",
            f"{AUTOSCALER}-selfsigned",
            {"selfSigned": {}},
            [release],
        )
        ca = self._cert_manager_object(
            f"{name}-ca",
            "Certificate",
            f"{AUTOSCALER}-ca",
            {
                "isCA": True,
                "commonName": f"{AUTOSCALER}-ca",
                "secretName": f"{AUTOSCALER}-ca",
                "duration": "87600h",  # 10 years; renewed (and re-injected) 30 days early
                "renewBefore": "720h",
                "privateKey": key,
                "issuerRef": {"name": f"{AUTOSCALER}-selfsigned", "kind": "Issuer"},
            },
            [self_signed],
        )
        issuer = self._cert_manager_object(
            f"{name}-ca-issuer",
            "Issuer",
            f"{AUTOSCALER}-ca",
            {"ca": {"secretName": f"{AUTOSCALER}-ca"}},
            [ca],
        )
        return self._cert_manager_object(
            f"{name}-cert",
            "Certificate",
            AUTOSCALER,
            {
                "secretName": f"{AUTOSCALER}-tls",
                "duration": "2160h",  # 90 days
                "renewBefore": "720h",  # 30 days: the expiry alert fires at 14
                "dnsNames": [
                    f"{AUTOSCALER}.{self._ns}.svc",
                    f"{AUTOSCALER}.{self._ns}.svc.cluster.local",
                ],
                "privateKey": key,
                "usages": ["digital signature", "key encipherment", "server auth"],
                "issuerRef": {"name": f"{AUTOSCALER}-ca", "kind": "Issuer"},
            },
            [issuer],
        )

    def _create_deployment(
        self, name: str, certificate: k8s.apiextensions.CustomResource
    ) -> k8s.apps.v1.Deployment:
        s = self._args.settings
        env = {
            "IOFLEET_AUTOSCALER_NAMESPACE": self._ns,
            "IOFLEET_AUTOSCALER_DEPLOYMENT": self._args.deployment_name,
            "IOFLEET_AUTOSCALER_POD_SELECTOR": ",".join(
                f"{k}={v}" for k, v in SERVER_LABELS.items()
            ),
            "IOFLEET_AUTOSCALER_ADMIN_PORT": str(ADMIN_PORT),
            "IOFLEET_AUTOSCALER_METRICS_PORT": str(METRICS_API_PORT),
            "IOFLEET_AUTOSCALER_TLS_CERT_FILE": f"{TLS_DIR}/tls.crt",
            "IOFLEET_AUTOSCALER_TLS_KEY_FILE": f"{TLS_DIR}/tls.key",
            "IOFLEET_AUTOSCALER_TARGET_CONNECTIONS": str(s.target_connections),
            "IOFLEET_AUTOSCALER_MIN": str(s.min_replicas),
            "IOFLEET_AUTOSCALER_MAX": str(s.max_replicas),
            "IOFLEET_AUTOSCALER_MODE": s.autoscaling,
            # Direct mode scales with the behaviour the HPA would have had.
            **autoscaler_behavior_env(hpa_behavior(s)),
        }
        container = {
            "name": "autoscaler",
            "image": s.autoscaler_image,
            "command": ["python", "-m", "autoscaler", "--backend", "kubernetes"],
            "ports": [{"name": "https", "containerPort": METRICS_API_PORT, "protocol": "TCP"}],
            "env": [{"name": k, "value": v} for k, v in env.items()],
            "resources": {
                "requests": {"cpu": "100m", "memory": "128Mi"},
                "limits": {"memory": "256Mi"},
            },
            # The autoscaler answers /healthz and /readyz on its HTTPS port (the kubelet
            # does not verify the serving certificate).
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "https", "scheme": "HTTPS"},
                "periodSeconds": 10,
            },
            "livenessProbe": {
                "exec": {
                    "command": [
                        "python",
                        "-c",
                        AUTOSCALER_LIVENESS.format(port=METRICS_API_PORT, tls_dir=TLS_DIR),
                    ]
                },
                "periodSeconds": 20,
                "timeoutSeconds": 5,
            },
            "securityContext": RESTRICTED_CONTAINER,
            "volumeMounts": [
                {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
                {"name": "tmp", "mountPath": "/tmp"},
            ],
        }
        deployment = k8s.apps.v1.Deployment(
            f"{name}-deployment",
            metadata=meta(AUTOSCALER, self._ns, AUTOSCALER_LABELS),
            spec={
                # One replica: the deletion-cost actuator is not leader-elected, and the
                # HPA only holds its last decision while the metrics API restarts.
                "replicas": 1,
                "selector": {"matchLabels": AUTOSCALER_LABELS},
                "template": {
                    "metadata": {"labels": AUTOSCALER_LABELS},
                    "spec": {
                        "serviceAccountName": AUTOSCALER,
                        "securityContext": RESTRICTED_POD,
                        "containers": [container],
                        "volumes": [
                            {"name": "tls", "secret": {"secretName": f"{AUTOSCALER}-tls"}},
                            {"name": "tmp", "emptyDir": {"sizeLimit": "16Mi"}},
                        ],
                    },
                },
            },
            # The Secret its pods mount is written by cert-manager for this Certificate.
            opts=pulumi.ResourceOptions.merge(
                self._opts, pulumi.ResourceOptions(depends_on=[certificate])
            ),
        )
        k8s.networking.v1.NetworkPolicy(
            f"{name}-netpol",
            metadata=meta(AUTOSCALER, self._ns, AUTOSCALER_LABELS),
            spec={
                "podSelector": {"matchLabels": AUTOSCALER_LABELS},
                "policyTypes": ["Ingress"],
                # The caller is the kube-apiserver (EKS control-plane ENIs in the VPC).
                "ingress": [{"ports": [{"port": "https", "protocol": "TCP"}]}],
            },
            opts=self._opts,
        )
        return deployment

    def _create_service(self, name: str) -> None:
        k8s.core.v1.Service(
            f"{name}-svc",
            metadata=meta(AUTOSCALER, self._ns, AUTOSCALER_LABELS),
            spec={
                "type": "ClusterIP",
                "selector": AUTOSCALER_LABELS,
                "ports": [{"name": "https", "port": 443, "targetPort": "https"}],
            },
            opts=self._opts,
        )

    def _create_api_services(self, name: str, after: list[pulumi.Resource]) -> None:
        for version, priority in (("v1beta1", 100), ("v1beta2", 200)):
            k8s.apiregistration.v1.APIService(
                f"{name}-{version}",
                metadata={
                    "name": f"{version}.custom.metrics.k8s.io",
                    "labels": AUTOSCALER_LABELS,
                    # cert-manager's cainjector keeps caBundle equal to the CA that signs
                    # the serving certificate (the field is left to it: not set here).
                    "annotations": {"cert-manager.io/inject-ca-from": f"{self._ns}/{AUTOSCALER}"},
                },
                spec={
                    "group": "custom.metrics.k8s.io",
                    "version": version,
                    "service": {"name": AUTOSCALER, "namespace": self._ns, "port": 443},
                    "insecureSkipTLSVerify": False,
                    "groupPriorityMinimum": 100,
                    # v1beta2 preferred where both are served.
                    "versionPriority": priority,
                },
                opts=pulumi.ResourceOptions.merge(
                    self._opts, pulumi.ResourceOptions(depends_on=after)
                ),
            )
