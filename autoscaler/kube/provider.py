"""Where the metrics API's numbers come from (the custom-metrics-apiserver
`CustomMetricsProvider` seam): pod metrics by name and by selector, no HTTP here."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

from autoscaler.kube.selectors import Match
from autoscaler.model import Node


@dataclass(frozen=True)
class PodMetric:
    namespace: str
    pod: str
    value: float
    timestamp: float


class MetricNotFound(Exception):
    """The API answers 404 NotFound with this message."""


class ConnectionsProvider:
    """Serves the one metric the source scrapes, for the pods of one namespace."""

    def __init__(self, nodes: Callable[[], Sequence[Node]], namespace: str, metric: str) -> None:
        self._nodes = nodes
        self.namespace = namespace
        self.metric = metric

    def list_metrics(self) -> list[tuple[str, str, bool]]:
        """(resource, metric, namespaced) for discovery."""
        return [("pods", self.metric, True)]

    def _check(self, resource: str, metric: str, name: str | None = None) -> None:
        if resource != "pods" or metric != self.metric:
            raise MetricNotFound(f"the server could not find the metric {metric} for {resource}")

    def by_name(self, namespace: str, resource: str, name: str, metric: str) -> PodMetric:
        self._check(resource, metric)
        if namespace == self.namespace:
            for node in self._nodes():
                if node.name == name and node.connections is not None and node.scraped_at:
                    return PodMetric(namespace, name, node.connections, node.scraped_at)
        raise MetricNotFound(f"the server could not find the metric {metric} for {resource} {name}")

    def by_selector(
        self, namespace: str, resource: str, selector: Match, metric: str
    ) -> list[PodMetric]:
        self._check(resource, metric)
        if namespace != self.namespace:
            return []
        return [
            PodMetric(namespace, node.name, node.connections, node.scraped_at)
            for node in sorted(self._nodes(), key=lambda n: n.name)
            if node.connections is not None
            and node.scraped_at is not None
            and not node.deleting
            and selector(node.labels)
        ]
