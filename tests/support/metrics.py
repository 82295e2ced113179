"""Read one sample from a server's /metrics, parsed by prometheus_client's own parser."""

from __future__ import annotations

import urllib.request

from prometheus_client.parser import text_string_to_metric_families


def metric(admin_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """The value of sample `name{labels}`; a missing sample fails the test, naming it.

    A labelled counter has no sample until its first increment: ask for it only once
    something has counted, or use `metric_or_zero`.
    """
    value = _find(admin_url, name, labels or {})
    assert value is not None, f"no sample {name}{labels or ''} at {admin_url}/metrics"
    return value


def metric_or_zero(admin_url: str, name: str, labels: dict[str, str] | None = None) -> float:
    """Like `metric`, but 0 for a labelled counter not counted yet (no sample so far)."""
    value = _find(admin_url, name, labels or {})
    return 0.0 if value is None else value


def _find(admin_url: str, name: str, labels: dict[str, str]) -> float | None:
    with urllib.request.urlopen(f"{admin_url}/metrics", timeout=5) as response:
        text = response.read().decode()
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and sample.labels == labels:
                return float(sample.value)
    return None
