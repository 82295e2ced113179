"""The README's tables are the reference: keep them in step with the code."""

from __future__ import annotations

import re
from pathlib import Path

from relay.metrics import RelayMetrics
from relay.settings import Settings as RelaySettings
from server.core.metrics import Metrics
from server.settings import Settings

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()


def test_every_setting_is_in_the_table() -> None:
    documented = set(
        re.findall(r"^\| `(IOFLEET_(?!AUTOSCALER_|RELAY_)[A-Z_]+)` \|", README, re.MULTILINE)
    )
    expected = {f"IOFLEET_{name.upper()}" for name in Settings.model_fields}
    assert documented == expected


def test_every_metric_is_in_the_table() -> None:
    documented = set(
        re.findall(
            r"^\| `((?:iofleet_(?!relay_)|process_)[a-z_]+)(?:\{[a-z]+\})?` \|",
            README,
            re.MULTILINE,
        )
    )
    exposed = set()
    for family in Metrics().registry.collect():
        kind = family.type
        exposed.add(family.name + ("_total" if kind == "counter" else ""))
    assert documented == exposed


def test_every_relay_setting_and_metric_is_in_its_table() -> None:
    settings = set(re.findall(r"^\| `IOFLEET_RELAY_([A-Z_]+)` \|", README, re.MULTILINE))
    assert settings == {name.upper() for name in RelaySettings.model_fields}
    documented = set(re.findall(r"^\| `(iofleet_relay_[a-z_]+)(?:\{[a-z,]+\})?` \|", README, re.M))
    exposed = {
        family.name + ("_total" if family.type == "counter" else "")
        for family in RelayMetrics().registry.collect()
        if family.name.startswith("iofleet_relay_")
    }
    assert documented == exposed


def test_quick_start_is_two_commands() -> None:
    block = README.split("## Quick start", 1)[1].split("```sh", 1)[1].split("```", 1)[0]
    assert [line.split("#")[0].strip() for line in block.strip().splitlines()] == [
        "make up",
        "make test",
    ]
