"""`iofleet plan`: figures against hand-computed cases, linear scaling, --write-stack."""

from __future__ import annotations

import json
import shutil
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.plan import (
    RULE_OF_THUMB,
    Capacity,
    Load,
    PlanError,
    Policy,
    RedisCapacity,
    load_catalog,
    load_profile,
    plan,
)
from iofleet.stackfile import read_config

REPO = Path(__file__).resolve().parents[2]
CATALOG = load_catalog()
# Round figures for cases worked by hand (the shipped profile's are tested separately).
REDIS = RedisCapacity(
    cpu_us_per_message=3.0, cpu_us_per_subscriber=0.3, delivery_bytes=300, source="test"
)


def test_connection_bound_case_by_hand() -> None:
    # One region, 30,000 connections, no messages; a server holds 5,000 (measured),
    # 0.1 MB per connection, 150 MB base; m7i.large nodes.
    load = Load(connections=30_000, regions=("us-east-1",))
    capacity = Capacity(
        connections_per_server=5000, memory_per_connection_mb=0.1, base_memory_mb=150
    )
    result = plan(load, capacity, REDIS, CATALOG, Policy(node_type="m7i.large"))
    region = result.regions[0]
    assert region.target_connections == 3500  # floor(5000 x 0.7)
    assert region.servers == 9  # ceil(30000 / 3500) = ceil(8.57)
    assert region.max_replicas == 14  # ceil(9 x 1.5)
    assert region.min_replicas == 3  # max(2, ceil(9 x 0.25) = 3)
    assert region.max_connections == 5000
    # (150 + 0.1 x 5000) x 1.25 = 812.5 MB = 774.9 MiB -> next multiple of 64 = 832
    assert region.server_memory == "832Mi"
    assert region.server_cpu == "1"
    # m7i.large: min(floor((2 - 0.35) / 1), floor((8 - 1) / 0.8125)) = min(1, 8) = 1
    assert region.pods_per_node == 1
    assert (region.node_min, region.node_desired, region.node_max) == (2, 9, 14)
    assert region.redis_node_type == "cache.t4g.small"  # no traffic: the cheapest
    # 730 h x (9 x 0.1008 + 2 x 0.032 + 0.10) = 730 x 1.0712 = 781.976
    assert region.monthly_cost == pytest.approx(781.98)
    assert result.monthly_cost == pytest.approx(781.98)


def test_delivery_bound_case_by_hand() -> None:
    # Two regions; 100,000 connections, 1,000 msg/s each heard by 1,000 members.
    # A server: 4,000 connections or 20,000 deliveries/s.
    load = Load(
        connections=100_000,
        messages_per_second=1000,
        fanout=1000,
        regions=("us-east-1", "eu-west-1"),
    )
    capacity = Capacity(
        connections_per_server=4000,
        memory_per_connection_mb=0.01,
        base_memory_mb=80,
        deliveries_per_second_per_server=20_000,
    )
    result = plan(load, capacity, REDIS, CATALOG)
    us, eu = result.regions
    assert us.connections == 50_000  # 100000 / 2
    assert us.deliveries_per_second == 500_000  # 1000 x 1000 / 2
    # min(4000 x 0.7 = 2800, 50000 x 20000 x 0.7 / 500000 = 1400) = 1400
    assert us.target_connections == 1400
    assert us.servers == 36  # ceil(50000 / 1400) = ceil(35.7)
    assert us.max_replicas == 54  # ceil(36 x 1.5)
    assert us.min_replicas == 9  # ceil(36 x 0.25)
    # Redis: 3 + 0.3 x min(1000, 54 servers) = 19.2 µs per message; 500 msg/s keep
    # 500 x 19.2e-6 = 0.0096 of a core busy, within t4g.small's 0.7 x 0.2 = 0.14; egress
    # 500 x 54 x 300 B x 8 = 0.0648 Gbit/s, within its 0.7 x 0.128 = 0.0896: one shard.
    assert (us.redis_node_type, us.redis_shards) == ("cache.t4g.small", 1)
    assert eu.stack_config() == us.stack_config()  # same sizing, different prices
    assert eu.monthly_cost > us.monthly_cost
    assert result.monthly_cost == pytest.approx(us.monthly_cost + eu.monthly_cost)


@pytest.mark.parametrize("bound", ["connections", "deliveries"])
def test_servers_scale_linearly_with_load(bound: str) -> None:
    capacity = Capacity(
        connections_per_server=4000,
        memory_per_connection_mb=0.01,
        base_memory_mb=80,
        deliveries_per_second_per_server=10_000,
    )
    base = 28_000  # 10 servers at 2,800 each
    fanout = 1.0 if bound == "connections" else 100.0
    servers = []
    for k in range(1, 6):
        load = Load(connections=base * k, messages_per_second=100.0 * k, fanout=fanout)
        servers.append(plan(load, capacity, REDIS, CATALOG).regions[0].servers)
    assert servers == [servers[0] * k for k in range(1, 6)], servers
    assert servers[0] > 2  # above the floor, so the scaling is the formula's, not the floor's


def test_rule_of_thumb_comparison_and_json() -> None:
    result = CliRunner().invoke(
        app,
        ["plan", "--connections", "50000", "--connections-per-server", "2500", "--json"],
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    assert data["plan"]["regions"][0]["target_connections"] == 1750  # 2500 x 0.7
    assert data["rule_of_thumb"]["regions"][0]["target_connections"] == 7000  # 10000 x 0.7
    assert data["plan"]["regions"][0]["servers"] == 29  # ceil(50000 / 1750)
    assert data["rule_of_thumb"]["regions"][0]["servers"] == 8  # ceil(50000 / 7000)


def test_capacity_file_feeds_the_plan(tmp_path: Path) -> None:
    capacity = tmp_path / "capacity.json"
    capacity.write_text(
        json.dumps({"connections_per_server": 1000, "deliveries_per_second_per_server": 5000})
    )
    result = CliRunner().invoke(
        app, ["plan", "--connections", "7000", "--capacity", str(capacity), "--json"]
    )
    assert result.exit_code == 0, result.output
    region = json.loads(result.output)["plan"]["regions"][0]
    assert region["target_connections"] == 700
    assert region["servers"] == 10


def test_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["plan", "--connections", "1000", "--node-type", "x9.huge"])
    assert result.exit_code == 2
    assert "x9.huge" in result.output and "Traceback" not in result.output
    with pytest.raises(PlanError, match="connections"):
        Load(connections=0)
    with pytest.raises(PlanError, match="no prices for region 'mars-1'"):
        plan(Load(connections=1000, regions=("mars-1",)), RULE_OF_THUMB, REDIS, CATALOG)


def test_write_stack_round_trips_and_keeps_comments(tmp_path: Path) -> None:
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    before = (tmp_path / "Pulumi.dev.yaml").read_text()
    args = ["plan", "--connections", "9000", "--connections-per-server", "1500"]
    args += ["--regions", "us-west-2", "--write-stack", "dev", "--stack-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    written = json.loads(result.output)["written"]
    after = (tmp_path / "Pulumi.dev.yaml").read_text()
    config = read_config(tmp_path / "Pulumi.dev.yaml")
    assert config["iofleet:target_connections"] == 1050  # floor(1500 x 0.7)
    assert config["iofleet:max_connections"] == 1500
    assert config["iofleet:min_replicas"] == 3  # max(2, ceil(ceil(9000/1050)=9 x 0.25))
    assert config["iofleet:max_replicas"] == 14  # ceil(9 x 1.5)
    assert "iofleet:target_connections" in written["changed"]
    # Every comment line survives verbatim, and keys the plan does not own are untouched.
    comments = [line for line in before.splitlines() if line.lstrip().startswith("#")]
    assert comments and all(line in after.splitlines() for line in comments)
    for key in ("aws:region", "iofleet:image", "iofleet:cors_origins", "iofleet:balancer"):
        assert config[key] == read_config(REPO / "Pulumi.dev.yaml")[key]
    # Writing the same plan again changes nothing.
    again = CliRunner().invoke(app, [*args, "--json"])
    assert json.loads(again.output)["written"]["changed"] == []
    assert (tmp_path / "Pulumi.dev.yaml").read_text() == after


def test_write_stack_refuses_a_region_it_did_not_plan(tmp_path: Path) -> None:
    shutil.copy(REPO / "Pulumi.dev.yaml", tmp_path / "Pulumi.dev.yaml")
    before = (tmp_path / "Pulumi.dev.yaml").read_text()
    args = ["plan", "--connections", "9000", "--regions", "eu-west-1", "--write-stack", "dev"]
    result = CliRunner().invoke(app, [*args, "--stack-dir", str(tmp_path)])
    assert result.exit_code == 2
    assert "us-west-2" in result.output
    assert (tmp_path / "Pulumi.dev.yaml").read_text() == before


def test_defaults_are_the_shipped_profile_not_the_rule_of_thumb() -> None:
    profile = load_profile()
    for key in ("date", "commit", "machine", "server", "redis"):
        assert profile.provenance.get(key), key  # every figure says where it came from
    result = CliRunner().invoke(
        app, ["plan", "--connections", "100000", "--messages-per-second", "50000", "--json"]
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.output)
    measured, seeds = data["plan"], data["rule_of_thumb"]
    assert measured["capacity"]["source"].startswith("capacity profile")
    assert measured["capacity"] == {
        **profile.capacity.__dict__,
        "deliveries_per_second_per_server": None,
    }
    assert data["profile"] == profile.provenance
    # Pod memory from the measured MB per connection: far below the seeds' 1 MB each.
    memory_mi = int(measured["regions"][0]["server_memory"].removesuffix("Mi"))
    assert memory_mi < 1024
    assert seeds["capacity"]["memory_per_connection_mb"] == 1.0
    assert seeds["regions"][0]["server_memory"] == "12160Mi"


def test_delivery_cost_model_by_hand() -> None:
    # A server: 10,000 connections, 40 µs per event, 3 µs per delivery. Fanout 50:
    # one server sends 1e6 x 50 / (40 + 50 x 3) = 263,157.9 deliveries/s.
    capacity = Capacity(
        connections_per_server=10_000,
        memory_per_connection_mb=0.007,
        base_memory_mb=80,
        event_cpu_us=40,
        delivery_cpu_us=3,
    )
    load = Load(connections=100_000, messages_per_second=20_000, fanout=50)
    region = plan(load, capacity, REDIS, CATALOG).regions[0]
    by_name = {f.name: f.value for f in region.figures}
    assert by_name["deliveries/s one server sends"] == 263_158
    # 1,000,000 deliveries/s: min(10000 x 0.7, 100000 x 263158 x 0.7 / 1e6 = 18421) = 7000
    assert region.target_connections == 7000
    # Fanout 2000: 1e6 x 2000 / (40 + 6000) = 331,126 per server; 20,000 msg/s x 2000 =
    # 4e7 deliveries/s: 100000 x 331126 x 0.7 / 4e7 = 579.5 -> 579 connections per server.
    heavy = plan(replace(load, fanout=2000), capacity, REDIS, CATALOG).regions[0]
    assert heavy.target_connections == 579
    assert heavy.servers == 173  # ceil(100000 / 579)


def test_heartbeat_cost_by_hand() -> None:
    # Idle connections still cost CPU: 500 µs per ping round every 25 s is 2e-5 of a
    # core per connection, so one core at 0.7 holds 0.7 / 2e-5 = 35,000 of them, below
    # the 100,000 x 0.7 = 70,000 the memory-measured connection figure allows.
    idle = Capacity(
        connections_per_server=100_000,
        memory_per_connection_mb=0.007,
        base_memory_mb=80,
        heartbeat_cpu_us=500,
    )
    quiet = Load(connections=1_000_000, messages_per_second=1, fanout=1)
    region = plan(quiet, idle, REDIS, CATALOG).regions[0]
    assert region.target_connections == 35_000
    assert region.servers == 29  # ceil(1e6 / 35000) = ceil(28.6)
    # The delivery-bound case above (1400 connections a server) with 125 µs heartbeats:
    # 5e-6 core per connection for heartbeats + 500000 / 50000 deliveries/s per
    # connection x 1 core / 20000 = 5e-4 for deliveries: 0.7 / 5.05e-4 = 1386.1.
    busy = Capacity(
        connections_per_server=4000,
        memory_per_connection_mb=0.01,
        base_memory_mb=80,
        deliveries_per_second_per_server=20_000,
        heartbeat_cpu_us=125,
    )
    load = Load(
        connections=100_000,
        messages_per_second=1000,
        fanout=1000,
        regions=("us-east-1", "eu-west-1"),
    )
    assert plan(load, busy, REDIS, CATALOG).regions[0].target_connections == 1386
    slower = plan(load, busy, REDIS, CATALOG, Policy(ping_interval_seconds=5)).regions[0]
    # A 5 s ping interval: 125 / 5 = 2.5e-5 core per connection: 0.7 / 5.25e-4 = 1333.3.
    assert slower.target_connections == 1333


def test_redis_shards_by_hand() -> None:
    # 200,000 msg/s to rooms of 10 (one region, 20 servers at most): Redis CPU per
    # message 3 + 0.3 x 10 = 6 µs, 1.2 cores busy; egress 200000 x 10 x 300 B x 8 =
    # 4.8 Gbit/s. r7g.2xlarge: max(1.2 / 0.7, 4.8 / (0.7 x 3.75)) = max(1.71, 1.83) -> 2
    # shards; m7g.large: max(1.71, 4.8 / (0.7 x 0.937) = 7.32) -> 8 shards.
    capacity = replace(RULE_OF_THUMB, connections_per_server=1000)
    load = Load(connections=13_000, messages_per_second=200_000, fanout=10)
    forced = Policy(redis_type="cache.r7g.2xlarge")
    assert plan(load, capacity, REDIS, CATALOG, forced).regions[0].redis_shards == 2
    m7g = plan(load, capacity, REDIS, CATALOG, Policy(redis_type="cache.m7g.large"))
    assert m7g.regions[0].redis_shards == 8
    cheapest = plan(load, capacity, REDIS, CATALOG).regions[0]
    # Per hour: r7g.2xlarge 2 x 0.874 = 1.748, r7g.xlarge 4 x 0.437 = 1.748, t4g.small
    # ceil(4.8 / (0.7 x 0.128)) = 54 x 0.032 = 1.728; m7g.large 8 x 0.158 = 1.264 wins.
    assert (cheapest.redis_node_type, cheapest.redis_shards) == ("cache.m7g.large", 8)
    # The cost counts every shard's primary and replica.
    shards_cost = 8 * 2 * 0.158 * CATALOG.hours_per_month
    assert cheapest.monthly_cost > shards_cost


def test_the_one_million_plan_writes_a_redis_cluster(tmp_path: Path) -> None:
    args = ["plan", "--connections", "1000000", "--messages-per-second", "20000"]
    args += ["--fanout", "50", "--regions", "us-east-1,eu-west-1", "--no-recovery"]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    regions = json.loads(result.output)["plan"]["regions"]
    assert [r["region"] for r in regions] == ["us-east-1", "eu-west-1"]
    assert all(r["servers"] >= 50 for r in regions)
    us = regions[0]
    # 10,000 msg/s x 50 subscribing nodes x 320 B x 8 = 1.28 Gbit/s per region; on
    # cache.m7g.large (0.937 Gbit/s baseline) ceil(1.28 / (0.7 x 0.937)) = 2 shards, the
    # cheapest in shards x price.
    assert (us["redis_node_type"], us["redis_shards"]) == ("cache.m7g.large", 2)
    stack = tmp_path / "Pulumi.prod-us-east-1.yaml"
    shutil.copy(REPO / "Pulumi.prod-us-east-1.yaml", stack)
    written = CliRunner().invoke(
        app, [*args, "--write-stack", "prod-us-east-1", "--stack-dir", str(tmp_path), "--json"]
    )
    assert written.exit_code == 0, written.output
    config = read_config(stack)
    assert config["iofleet:redis_mode"] == "cluster"
    assert config["iofleet:redis_shards"] == us["redis_shards"]
    assert config["iofleet:redis_replicas"] == us["redis_replicas"] >= 1
    assert config["iofleet:redis_node_type"] == us["redis_node_type"]
    assert config["iofleet:recovery"] is False
    changed = json.loads(written.output)["written"]["changed"]
    assert {"iofleet:redis_mode", "iofleet:redis_shards", "iofleet:recovery"} <= set(changed)


def test_a_one_shard_plan_leaves_the_redis_mode_alone(tmp_path: Path) -> None:
    stack = tmp_path / "Pulumi.dev.yaml"
    shutil.copy(REPO / "Pulumi.dev.yaml", stack)
    args = ["plan", "--connections", "9000", "--regions", "us-west-2"]
    result = CliRunner().invoke(app, [*args, "--write-stack", "dev", "--stack-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    config = read_config(stack)
    assert config["iofleet:redis_shards"] == 1
    assert "iofleet:redis_mode" not in config  # no switch to a new group for one shard
    assert config["iofleet:recovery"] is True
