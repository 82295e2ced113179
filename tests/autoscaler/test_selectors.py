"""Label selectors as the HPA sends them in `labelSelector=`."""

from __future__ import annotations

import pytest

from autoscaler.kube.selectors import parse_selector

POD = {"app": "iofleet-server", "tier": "socket", "zone": "a"}


@pytest.mark.parametrize(
    ("selector", "matches"),
    [
        ("", True),
        ("app=iofleet-server", True),
        ("app==iofleet-server", True),
        ("app=other", False),
        ("app!=other", True),
        ("app=iofleet-server,tier=socket", True),
        ("app=iofleet-server,tier=web", False),
        ("zone in (a,b)", True),
        ("zone in (b, c)", False),
        ("zone notin (b,c),app=iofleet-server", True),
        ("tier", True),
        ("!tier", False),
        ("!missing", True),
    ],
)
def test_selector(selector: str, matches: bool) -> None:
    assert parse_selector(selector)(POD) is matches


@pytest.mark.parametrize("bad", ["=x", "a b", "in (x)"])
def test_bad_selector_is_refused(bad: str) -> None:
    with pytest.raises(ValueError, match="bad selector term"):
        parse_selector(bad)
