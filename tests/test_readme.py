"""The README's tables are the reference: keep them in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from server.core.metrics import Metrics
from server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_table() -> None:
    documented = set(re.findall(r"^\| `(IOFLEET_(?!AUTOSCALER_)[A-Z_]+)` \|", README, re.MULTILINE))
    expected = {f"IOFLEET_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_every_metric_is_in_the_table() -> None:
    documented = set(
        re.findall(r"^\| `((?:iofleet|process)_[a-z_]+)(?:\{[a-z]+\})?` \|", README, re.MULTILINE)
    )
    exposed = set()
    for family in Metrics().registry.collect():
        kind = family.type
        exposed.add(family.name + ("_total" if kind == "counter" else ""))
    assert documented == exposed


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "make up",
        "make test",
    ]
