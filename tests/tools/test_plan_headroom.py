"""`iofleet plan --load-step`: warm headroom (headroom_pods) by hand, in JSON and tables,
written into a stack file, and a bad step refused in one line."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.plan import Capacity, Load, PlanError, RedisCapacity, headroom, load_catalog, plan
from iofleet.stackfile import read_config

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
REDIS = RedisCapacity(
    cpu_us_per_message=3.0, cpu_us_per_subscriber=0.3, delivery_bytes=300, source="test"
)


def test_headroom_by_hand() -> None:
    # Two regions, a server holds 5,000 (target 3,500); a step of 20,000 new connections
    # within one node start: 10,000 per region -> ceil(10000 / 3500) = 3 pods each.
    result = plan(
        Load(connections=60_000, regions=("us-east-1", "eu-west-1")),
        Capacity(5000, memory_per_connection_mb=0.1, base_memory_mb=150),
        REDIS,
        CATALOG,
    )
    us, eu = headroom(20_000, result)
    assert (us.region, us.load_step, us.pods) == ("us-east-1", 10_000, 3)
    assert eu.pods == 3
    assert "ceil(ceil(20000 / 2 regions) / 3500 target)" in us.figure.formula
    assert us.stack_config() == {"headroom_pods": 3}
    # No step, no room; a huge step is capped at the HPA maximum (ceil(9 x 1.5) = 14).
    assert headroom(0, result)[0].pods == 0
    assert headroom(10_000_000, result)[0].pods == result.regions[0].max_replicas == 14
    with pytest.raises(PlanError, match="--load-step"):
        headroom(-1, result)


def test_load_step_in_json_and_tables() -> None:
    args = ["plan", "--connections", "30000", "--connections-per-server", "5000"]
    result = CliRunner().invoke(app, [*args, "--load-step", "7001", "--json"])
    assert result.exit_code == 0, result.output
    (room,) = json.loads(result.output)["headroom"]
    assert room["pods"] == 3  # ceil(7001 / 3500)
    table = CliRunner().invoke(app, [*args, "--load-step", "7001"])
    assert "warm headroom" in table.output and "7001" in table.output
    without = CliRunner().invoke(app, [*args, "--json"])
    assert "headroom" not in json.loads(without.output)
    bad = CliRunner().invoke(app, [*args, "--load-step", "-5"])
    assert bad.exit_code == 2 and "--load-step" in bad.output and "Traceback" not in bad.output


def test_write_stack_sets_headroom_pods(tmp_path: Path) -> None:
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    args = ["plan", "--connections", "9000", "--connections-per-server", "1500"]
    args += ["--regions", "us-west-2", "--load-step", "2500"]
    args += ["--write-stack", "dev", "--stack-dir", str(tmp_path), "--json"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "iofleet:headroom_pods" in json.loads(result.output)["written"]["changed"]
    # ceil(2500 / floor(1500 x 0.7) = 1050) = 3
    assert read_config(tmp_path / "Pulumi.dev.yaml")["iofleet:headroom_pods"] == 3
