"""The alert rules read only metrics the server and the relay export, and the memory-growth
rule (closed connections still held, issue 13) is there."""

from __future__ import annotations

import re

from infra.observability import Thresholds, alert_rules
from relay.metrics import RelayMetrics
from server.core.metrics import Metrics

# Metrics the rules read from elsewhere (kubelet/cAdvisor, kube-state-metrics,
# kube-apiserver's aggregator, cert-manager).
EXTERNAL = re.compile(r"^(container_|kube_|aggregator_|certmanager_)")


def exported() -> set[str]:
    suffixes = {"counter": ("_total",), "histogram": ("_bucket", "_sum", "_count")}
    names: set[str] = set()
    families = [*Metrics().registry.collect(), *RelayMetrics().registry.collect()]
    for family in families:
        names.add(family.name)
        names.update(family.name + suffix for suffix in suffixes.get(family.type, ()))
    return names


def rules() -> list[dict[str, object]]:
    return [r for group in alert_rules("iofleet", Thresholds()) for r in group["rules"]]


def test_rules_read_only_exported_server_metrics() -> None:
    available = exported()
    for rule in rules():
        expr = str(rule["expr"])
        for name in re.findall(r"\b([a-z_]+)\{", expr):
            if EXTERNAL.match(name):
                continue
            assert name in available, (rule["alert"], name)


def test_memory_growth_with_flat_connections_is_alerted() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "IofleetMemoryGrowsWithFlatConnections"]
    expr = str(rule["expr"])
    assert "process_resident_memory_bytes" in expr
    assert "iofleet_connections{" in expr


def test_messages_the_outbox_dropped_are_alerted() -> None:
    (rule,) = [r for r in rules() if r["alert"] == "IofleetFanoutMessagesDropped"]
    assert "iofleet_fanout_dropped_total{" in str(rule["expr"])
    assert rule["labels"] == {"severity": "critical", "service": "iofleet"}


def test_pending_server_pods_are_alerted() -> None:
    """A surge pod or an HPA scale-out with no node to go to stays Pending: alert on it
    (issue 24), scoped to the fleet's namespace and its server pods."""
    (rule,) = [r for r in rules() if r["alert"] == "IofleetServerPodsPending"]
    expr = str(rule["expr"])
    assert "kube_pod_status_phase{" in expr and 'phase="Pending"' in expr
    assert 'namespace="iofleet"' in expr and 'pod=~"iofleet-server-.+"' in expr
    assert rule["for"] == "10m"


def test_the_metrics_api_and_its_certificate_are_alerted() -> None:
    """The aggregated API's serving cert used to renew only on `pulumi up` (issue 24):
    alert when the APIService is unavailable and when renewal has been failing."""
    by_name = {r["alert"]: r for r in rules()}
    down = str(by_name["IofleetMetricsApiUnavailable"]["expr"])
    assert "aggregator_unavailable_apiservice{" in down and "custom.metrics.k8s.io" in down
    expiring = str(by_name["IofleetServingCertExpiring"]["expr"])
    assert 'certmanager_certificate_expiration_timestamp_seconds{name="iofleet-autoscaler"}' in (
        expiring
    )
    assert f"< {14 * 86400}" in expiring


def test_a_region_link_down_lagging_or_dropping_is_alerted() -> None:
    """The relay's links (docs/regions.md): down, behind, or dropping, per link."""
    named = {str(r["alert"]): str(r["expr"]) for r in rules()}
    assert "iofleet_relay_link_up{" in named["IofleetRegionLinkDown"]
    assert "by (link)" in named["IofleetRegionLinkDown"]
    assert "iofleet_relay_link_lag_seconds{" in named["IofleetRegionLinkLagging"]
    assert "iofleet_relay_dropped_messages_total{" in named["IofleetRegionMessagesDropped"]
