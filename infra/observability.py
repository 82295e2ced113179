"""Observability: Prometheus scrape + alert rules, the Grafana dashboard, CloudWatch
alarms for ElastiCache and the load balancer."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pulumi
import pulumi_aws as aws
import pulumi_kubernetes as k8s
import yaml

from infra.workloads import (
    AUTOSCALER,
    CERT_MANAGER_NAMESPACE,
    CUSTOM_METRICS_GROUP,
    SERVER,
    SERVER_LABELS,
)

DASHBOARD = Path(__file__).parent / "dashboards" / "iofleet.json"
# prometheus-community/helm-charts charts/kube-prometheus-stack 88.5.3 (operator v0.93.1,
# kubeVersion >=1.25): the operator with its CRDs (the chart's crds/ folder, which Helm
# applies before any template), Prometheus, Alertmanager, Grafana with its dashboard
# sidecar, kube-state-metrics (the HPA and Pending-pod rules read it) and node-exporter.
PROMETHEUS_STACK_CHART = (
    "kube-prometheus-stack",
    "88.5.3",
    "https://prometheus-community.github.io/helm-charts",
)


@dataclass(frozen=True)
class Thresholds:
    """Alert thresholds; each one is the point where users start to notice."""

    connect_p95_seconds: float = 0.5
    """Handshake (auth + join) time, 95th percentile."""
    handler_p99_seconds: float = 0.2
    """Application event handler time, 99th percentile."""
    memory_per_connection_bytes: int = 64 * 1024
    """Working set per open connection, on pods holding at least 1000."""
    event_loop_lag_seconds: float = 0.1
    cpu_of_request: float = 0.8
    """CPU used over CPU requested, sustained."""
    redis_engine_cpu_percent: int = 70
    redis_memory_percent: int = 80
    redis_replication_lag_seconds: int = 1
    redis_connections: int = 52_000
    """Client connections on one Redis node (each server pod: one subscriber link per
    shard plus its publishers): 80 % of ElastiCache's maxclients, fixed at 65,000."""
    balancer_5xx_per_5m: int = 10
    region_link_lag_seconds: float = 5.0
    """Oldest message an inter-region link holds (docs/regions.md): past the link's
    own 2 s timeout and reconnect backoff, far users are visibly behind."""


def alert_rules(namespace: str, t: Thresholds) -> list[dict[str, Any]]:
    """Prometheus rule groups (the PrometheusRule spec and the plain rules file)."""
    server = f'namespace="{namespace}", container="server"'
    scoped = f'namespace="{namespace}"'

    def rule(name: str, expr: str, duration: str, severity: str, summary: str) -> dict[str, Any]:
        return {
            "alert": name,
            "expr": expr,
            "for": duration,
            "labels": {"severity": severity, "service": "iofleet"},
            "annotations": {"summary": summary},
        }

    def quantile(q: float, selector: str) -> str:
        return (
            f"histogram_quantile({q}, sum by (le) "
            f"(rate(iofleet_event_handler_seconds_bucket{{{selector}}}[5m])))"
        )

    rules = [
        rule(
            "IofleetConnectSlow",
            f"{quantile(0.95, scoped + ', event=' + chr(34) + 'connect' + chr(34))} "
            f"> {t.connect_p95_seconds}",
            "10m",
            "warning",
            f"p95 connect handling above {t.connect_p95_seconds}s",
        ),
        rule(
            "IofleetHandlerLatencyHigh",
            f"{quantile(0.99, scoped)} > {t.handler_p99_seconds}",
            "10m",
            "warning",
            f"p99 event handler time above {t.handler_p99_seconds}s",
        ),
        rule(
            "IofleetMemoryPerConnectionHigh",
            f"(sum by (pod) (container_memory_working_set_bytes{{{server}}}) "
            f"/ sum by (pod) (iofleet_connections{{{scoped}}})) > {t.memory_per_connection_bytes}"
            f" and on (pod) (sum by (pod) (iofleet_connections{{{scoped}}}) > 1000)",
            "15m",
            "warning",
            "memory per connection above budget (leak or oversized state)",
        ),
        rule(
            # Connections that closed but whose state the process still holds (issue 13):
            # resident memory grows by more than 64 MiB in 30 min while the
            # connection count did not grow.
            "IofleetMemoryGrowsWithFlatConnections",
            f"sum by (pod) (delta(process_resident_memory_bytes{{{scoped}}}[30m])) > 67108864"
            f" and on (pod) sum by (pod) (delta(iofleet_connections{{{scoped}}}[30m])) <= 0",
            "15m",
            "warning",
            "server memory grows while its connections do not (closed connections still held?)",
        ),
        rule(
            "IofleetEventLoopLag",
            f"max by (pod) (iofleet_event_loop_lag_seconds{{{scoped}}}) "
            f"> {t.event_loop_lag_seconds}",
            "5m",
            "critical",
            f"event loop lag above {t.event_loop_lag_seconds}s: pings and messages stall",
        ),
        rule(
            "IofleetCpuHigh",
            f"sum by (pod) (rate(container_cpu_usage_seconds_total{{{server}}}[5m])) / "
            f'sum by (pod) (kube_pod_container_resource_requests{{{server}, resource="cpu"}}) '
            f"> {t.cpu_of_request}",
            "10m",
            "warning",
            "server CPU above its request; scale-out is not keeping up",
        ),
        rule(
            "IofleetFanoutDown",
            f"min by (pod) (iofleet_fanout_up{{{scoped}}}) == 0",
            "1m",
            "critical",
            "a server lost its Redis subscription: cross-node messages wait in its outbox",
        ),
        rule(
            "IofleetFanoutPublishFailures",
            f"sum(rate(iofleet_fanout_publish_failures_total{{{scoped}}}[5m])) > 0",
            "5m",
            "warning",
            "publishes to Redis are failing (held in the outbox and retried in order)",
        ),
        rule(
            "IofleetFanoutMessagesDropped",
            f"sum by (reason) (rate(iofleet_fanout_dropped_total{{{scoped}}}[5m])) > 0",
            "1m",
            "critical",
            "the fan-out outbox dropped messages (full, expired or shut down): other "
            "nodes' clients missed them",
        ),
        rule(
            "IofleetAtMaxReplicas",
            f"kube_horizontalpodautoscaler_status_current_replicas{{{scoped}, "
            f'horizontalpodautoscaler="{SERVER}"}} >= '
            f"kube_horizontalpodautoscaler_spec_max_replicas{{{scoped}, "
            f'horizontalpodautoscaler="{SERVER}"}}',
            "15m",
            "warning",
            "the HPA is pinned at max_replicas; raise it or the target",
        ),
        rule(
            # Pods no node has room for (a rollout's surge pod, HPA scale-out beyond the
            # nodes): the rollout hangs and the fleet caps below what the HPA asked for,
            # while the HPA itself looks healthy (issue 24).
            "IofleetServerPodsPending",
            f'sum(kube_pod_status_phase{{{scoped}, phase="Pending", pod=~"{SERVER}-.+"}}) > 0',
            "10m",
            "warning",
            "server pods Pending for 10 min: no node has room (add nodes or lower server_cpu)",
        ),
        rule(
            # kube-apiserver's view of the aggregated API: an expired or unknown serving
            # cert, or no ready autoscaler, and the HPA is blind.
            "IofleetMetricsApiUnavailable",
            "max(aggregator_unavailable_apiservice"
            f'{{name=~"v1beta[12].{CUSTOM_METRICS_GROUP}"}}) > 0',
            "5m",
            "critical",
            "custom.metrics.k8s.io unavailable: the HPA cannot read iofleet_connections",
        ),
        rule(
            # cert-manager renews 30 days before expiry (infra/workloads.py); 14 days
            # left means renewal has been failing for two weeks.
            "IofleetServingCertExpiring",
            "min(certmanager_certificate_expiration_timestamp_seconds"
            f'{{name="{AUTOSCALER}"}}) - time() < {14 * 86400}',
            "1h",
            "warning",
            "the autoscaler's serving certificate expires within 14 days (cert-manager "
            "renewal failing?)",
        ),
        # The inter-region relay (docs/regions.md): one series per link (the far region).
        rule(
            "IofleetRegionLinkDown",
            f"min by (link) (iofleet_relay_link_up{{{scoped}}}) == 0",
            "2m",
            "critical",
            "the link to another region is down: its rooms' messages are held in the relay's "
            "outbox (each region still serves its own users)",
        ),
        rule(
            "IofleetRegionLinkLagging",
            f"max by (link) (iofleet_relay_link_lag_seconds{{{scoped}}}) "
            f"> {t.region_link_lag_seconds}",
            "2m",
            "warning",
            f"messages for another region wait more than {t.region_link_lag_seconds}s",
        ),
        rule(
            "IofleetRegionMessagesDropped",
            f"sum by (link, reason) (rate(iofleet_relay_dropped_messages_total{{{scoped}}}[5m]))"
            " > 0",
            "1m",
            "critical",
            "the relay's outbox dropped messages for another region (full, expired): its "
            "users missed them",
        ),
    ]
    return [{"name": "iofleet.rules", "rules": rules}]


@dataclass
class ObservabilityArgs:
    provider: k8s.Provider
    namespace: str
    prometheus_namespace: str
    prometheus_operator: bool
    selector_label: str
    """label=value the Prometheus operator selects ServiceMonitors/PrometheusRules by
    (kube-prometheus-stack: release=<its release name>); "none" = no label."""
    admin_service_labels: dict[str, str]
    redis_member_ids: list[str]
    lb_type: str
    lb_arn_suffix: pulumi.Output[str]
    target_group_arn_suffix: pulumi.Output[str]
    alarm_email: str
    name_prefix: str
    tags: dict[str, str]
    depends_on: list[pulumi.Resource]
    cert_manager: bool = False
    """cert-manager runs (the autoscaler's certificate): scrape it for the expiry alert."""
    install_prometheus_stack: bool = False
    """With prometheus_operator: install kube-prometheus-stack here (its CRDs and
    namespace), so a first `up` on a new cluster finds them."""
    thresholds: Thresholds = field(default_factory=Thresholds)


def _label(text: str) -> dict[str, str]:
    """'release=prometheus' -> {'release': 'prometheus'}; 'none' -> {}."""
    if text == "none":
        return {}
    key, _, value = text.partition("=")
    return {key: value}


class Observability(pulumi.ComponentResource):
    """ServiceMonitor + PrometheusRule (or a rules ConfigMap), the Grafana dashboard
    ConfigMap, and CloudWatch alarms to an SNS topic."""

    alarm_topic_arn: pulumi.Output[str]

    def __init__(
        self, name: str, args: ObservabilityArgs, opts: pulumi.ResourceOptions | None = None
    ) -> None:
        super().__init__("iofleet:observability:Observability", name, None, opts)
        self._args = args
        after = list(args.depends_on)
        if args.prometheus_operator and args.install_prometheus_stack:
            # The CRs and the dashboard need the CRDs and the namespace this release makes.
            after.append(self._create_prometheus_stack(name))
        self._k8s = pulumi.ResourceOptions(parent=self, provider=args.provider, depends_on=after)
        self._create_prometheus(name)
        self._create_dashboard(name)
        topic = aws.sns.Topic(
            f"{name}-alarms",
            name=f"{args.name_prefix}-alarms",
            tags=args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )
        if args.alarm_email:
            aws.sns.TopicSubscription(
                f"{name}-alarms-email",
                topic=topic.arn,
                protocol="email",
                endpoint=args.alarm_email,
                opts=pulumi.ResourceOptions(parent=self),
            )
        self.alarm_topic_arn = topic.arn
        self._create_redis_alarms(name)
        self._create_balancer_alarms(name)
        self.register_outputs({"alarm_topic_arn": self.alarm_topic_arn})

    def _create_prometheus_stack(self, name: str) -> k8s.helm.v3.Release:
        a = self._args
        label = _label(a.selector_label)
        chart, version, repo = PROMETHEUS_STACK_CHART
        # Prometheus selects monitors and rules by the configured label (none: all). The
        # chart labels its own monitors release=<release name>, so with a `release=` label
        # the release is named after it and Prometheus keeps scraping the cluster too.
        selector = {"matchLabels": label}
        spec = {
            "serviceMonitorSelectorNilUsesHelmValues": False,
            "serviceMonitorSelector": selector,
            "ruleSelectorNilUsesHelmValues": False,
            "ruleSelector": selector,
        }
        return k8s.helm.v3.Release(
            f"{name}-prometheus-stack",
            name=label.get("release", "prometheus"),
            chart=chart,
            version=version,
            repository_opts={"repo": repo},
            namespace=a.prometheus_namespace,
            create_namespace=True,
            # Grafana's admin password: the chart generates one into a Secret
            # (<release>-grafana), nothing is written here.
            values={"prometheus": {"prometheusSpec": spec}},
            # Rolled back if its pods do not come up; ten minutes for a fresh cluster.
            atomic=True,
            timeout=600,
            opts=pulumi.ResourceOptions(parent=self, provider=a.provider, depends_on=a.depends_on),
        )

    def _create_prometheus(self, name: str) -> None:
        a = self._args
        groups = alert_rules(a.namespace, a.thresholds)
        labels = {**SERVER_LABELS, **_label(a.selector_label)}
        if not a.prometheus_operator:
            # Without the operator's CRDs: a rules file for the team's own Prometheus.
            k8s.core.v1.ConfigMap(
                f"{name}-rules",
                metadata={"name": f"{SERVER}-rules", "namespace": a.namespace, "labels": labels},
                data={"iofleet.rules.yaml": yaml.safe_dump({"groups": groups}, sort_keys=False)},
                opts=self._k8s,
            )
            return
        k8s.apiextensions.CustomResource(
            f"{name}-servicemonitor",
            api_version="monitoring.coreos.com/v1",
            kind="ServiceMonitor",
            metadata={"name": SERVER, "namespace": a.namespace, "labels": labels},
            spec={
                "selector": {"matchLabels": a.admin_service_labels},
                "namespaceSelector": {"matchNames": [a.namespace]},
                # Admin port only: /metrics is never on the public listener.
                "endpoints": [{"port": "admin", "path": "/metrics", "interval": "15s"}],
            },
            opts=self._k8s,
        )
        if a.cert_manager:
            # cert-manager's metrics Service (chart v1.21.1 templates/service.yaml, port
            # http-metrics, made while prometheus.enabled, the default): the
            # serving-cert expiry alert reads certmanager_certificate_* from it.
            k8s.apiextensions.CustomResource(
                f"{name}-cert-manager-monitor",
                api_version="monitoring.coreos.com/v1",
                kind="ServiceMonitor",
                metadata={
                    "name": "cert-manager",
                    "namespace": CERT_MANAGER_NAMESPACE,
                    "labels": labels,
                },
                spec={
                    "selector": {
                        "matchLabels": {
                            "app.kubernetes.io/name": "cert-manager",
                            "app.kubernetes.io/component": "controller",
                        }
                    },
                    "endpoints": [{"port": "http-metrics", "interval": "60s"}],
                },
                opts=self._k8s,
            )
        k8s.apiextensions.CustomResource(
            f"{name}-rules",
            api_version="monitoring.coreos.com/v1",
            kind="PrometheusRule",
            metadata={"name": SERVER, "namespace": a.namespace, "labels": labels},
            spec={"groups": groups},
            opts=self._k8s,
        )

    def _create_dashboard(self, name: str) -> None:
        a = self._args
        # With the operator, its namespace holds Grafana (made by the release above, or a
        # documented prerequisite with prometheus_stack_install: false); without it
        # nothing guarantees that namespace, so the dashboard stays in ours (point the
        # Grafana sidecar's searchNamespace at it, or import the JSON).
        namespace = a.prometheus_namespace if a.prometheus_operator else a.namespace
        k8s.core.v1.ConfigMap(
            f"{name}-dashboard",
            metadata={
                "name": "iofleet-dashboard",
                "namespace": namespace,
                # The Grafana sidecar loads every ConfigMap carrying this label.
                "labels": {"grafana_dashboard": "1", "app.kubernetes.io/part-of": "iofleet"},
            },
            data={"iofleet.json": json.dumps(json.loads(DASHBOARD.read_text()))},
            opts=self._k8s,
        )

    def _alarm(
        self,
        name: str,
        *,
        namespace: str,
        metric: str,
        dimensions: pulumi.Input[dict[str, pulumi.Input[str]]],
        statistic: str,
        threshold: float,
        periods: int,
        description: str,
    ) -> None:
        aws.cloudwatch.MetricAlarm(
            name,
            name=name,
            namespace=namespace,
            metric_name=metric,
            dimensions=dimensions,
            statistic=statistic,
            period=60,
            evaluation_periods=periods,
            datapoints_to_alarm=periods,
            threshold=threshold,
            comparison_operator="GreaterThanThreshold",
            # A metric that stops (a replica that became primary, an idle LB) is not an
            # incident by itself.
            treat_missing_data="notBreaching",
            alarm_description=description,
            alarm_actions=[self.alarm_topic_arn],
            ok_actions=[self.alarm_topic_arn],
            tags=self._args.tags,
            opts=pulumi.ResourceOptions(parent=self),
        )

    def _create_redis_alarms(self, name: str) -> None:
        t = self._args.thresholds
        prefix = self._args.name_prefix
        # (name suffix, metric, statistic, threshold, minutes, what it means), every node.
        alarms: list[tuple[str, str, str, float, int, str]] = [
            ("engine-cpu", "EngineCPUUtilization", "Average", t.redis_engine_cpu_percent, 5,
             "Redis main thread busy; pub/sub fan-out will lag"),
            ("memory", "DatabaseMemoryUsagePercentage", "Average", t.redis_memory_percent, 5,
             "Redis memory high (pub/sub output buffers?)"),
            ("replication-lag", "ReplicationLag", "Maximum", t.redis_replication_lag_seconds, 3,
             "replica behind; a failover would lose messages"),
            # Packets the node's instance shaped because its outbound bandwidth passed the
            # type's allowance: pub/sub delivery slows before the CPU shows it.
            ("network-out", "NetworkBandwidthOutAllowanceExceeded", "Sum", 0, 3,
             "Redis outbound bandwidth over the node type's allowance"),
            ("connections", "CurrConnections", "Maximum", t.redis_connections, 3,
             "Redis subscriber/publisher connections near maxclients"),
            ("evictions", "Evictions", "Sum", 0, 1, "Redis evicting keys"),
        ]  # fmt: skip
        for member in self._args.redis_member_ids:
            for suffix, metric, statistic, threshold, periods, what in alarms:
                self._alarm(
                    f"{member}-{suffix}",
                    namespace="AWS/ElastiCache",
                    metric=metric,
                    dimensions={"CacheClusterId": member},
                    statistic=statistic,
                    threshold=threshold,
                    periods=periods,
                    description=f"{prefix}: {what}",
                )

    def _create_balancer_alarms(self, name: str) -> None:
        a = self._args
        prefix = a.name_prefix
        namespace = "AWS/ApplicationELB" if a.lb_type == "application" else "AWS/NetworkELB"
        if a.lb_type == "application":
            self._alarm(
                f"{prefix}-lb-5xx",
                namespace=namespace,
                metric="HTTPCode_ELB_5XX_Count",
                dimensions={"LoadBalancer": a.lb_arn_suffix},
                statistic="Sum",
                threshold=a.thresholds.balancer_5xx_per_5m,
                periods=5,
                description=f"{prefix}: the ALB answers 5xx (no healthy target?)",
            )
        self._alarm(
            f"{prefix}-lb-unhealthy",
            namespace=namespace,
            metric="UnHealthyHostCount",
            dimensions={"LoadBalancer": a.lb_arn_suffix, "TargetGroup": a.target_group_arn_suffix},
            statistic="Maximum",
            threshold=0,
            periods=3,
            description=f"{prefix}: targets failing the balancer health check",
        )
