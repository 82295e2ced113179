"""The planner sizes Redis for the recovery stream (`iofleet.plan.recovery_stream`):
window x recoverable messages/s x measured bytes per entry, capped by max_messages,
and its write load; a stream that outgrows a node picks a bigger one."""

from __future__ import annotations

from dataclasses import replace

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.plan import (
    STREAM_ENTRY_BYTES_PER_MESSAGE_BYTE,
    STREAM_ENTRY_FIXED_BYTES,
    Capacity,
    Figure,
    Load,
    PlanError,
    Recovery,
    RedisCapacity,
    load_catalog,
    plan,
    recovery_stream,
)

CATALOG = load_catalog()
CAPACITY = Capacity(connections_per_server=5000, memory_per_connection_mb=0.1, base_memory_mb=150)
REDIS = RedisCapacity(
    cpu_us_per_message=3.0, cpu_us_per_subscriber=0.3, delivery_bytes=300, source="test"
)


def figures(messages: float, recovery: Recovery) -> tuple[float, dict[str, Figure]]:
    found: list[Figure] = []
    gib = recovery_stream(messages, recovery, found)
    return gib, {f.name: f for f in found}


def test_the_stream_by_hand() -> None:
    # 500 msg/s for 120 s = 60,000 entries (under max_messages), 100 B of text each:
    # 60000 x (237 + 1.26 x 100) B = 21,780,000 B = 20.8 MiB; 500 scripts/s.
    assert (STREAM_ENTRY_FIXED_BYTES, STREAM_ENTRY_BYTES_PER_MESSAGE_BYTE) == (237.0, 1.26)
    gib, named = figures(500, Recovery())
    assert named["recovery stream entries"].value == 60_000
    assert gib * 2**30 == pytest.approx(60_000 * (237 + 126))
    assert named["recovery stream memory (MiB)"].value == pytest.approx(20.8, abs=0.05)
    assert named["Redis recovery writes/s"].value == 500
    assert "recovery window kept (s)" not in named


def test_max_messages_caps_the_stream_and_says_what_window_is_left() -> None:
    # 2,000 msg/s x 120 s = 240,000 > 100,000: the stream keeps 50 s of messages.
    gib, named = figures(2000, Recovery())
    assert named["recovery stream entries"].value == 100_000
    kept = named["recovery window kept (s)"]
    assert kept.value == 50.0 and ">= 240000" in kept.formula
    assert gib * 2**30 == pytest.approx(100_000 * (237 + 126))


def test_recovery_off_or_no_messages_costs_nothing() -> None:
    assert figures(1000, Recovery(enabled=False)) == (0.0, {})
    assert figures(0, Recovery()) == (0.0, {})


def test_a_stream_too_big_for_the_cheapest_node_picks_a_bigger_one() -> None:
    # 100 msg/s of 3,000 B kept an hour: 360,000 x (237 + 3780) B = 1.35 GiB; the relay
    # load (100 msg/s, one subscriber) fits a t4g.small, its 1.37 GiB x 0.7 does not hold
    # the stream; the next cheapest that does is a t4g.medium (3.09 x 0.7 = 2.16 GiB).
    hour = Recovery(window_seconds=3600, max_messages=10_000_000, message_bytes=3000)
    load = Load(connections=10_000, messages_per_second=100, recovery=hour)
    assert plan(load, CAPACITY, REDIS, CATALOG).regions[0].redis_node_type == "cache.t4g.medium"
    off = replace(load, recovery=replace(hour, enabled=False))
    assert plan(off, CAPACITY, REDIS, CATALOG).regions[0].redis_node_type == "cache.t4g.small"
    # A day of it (8.64M entries, 32 GiB) fits no node at 0.7 of its memory (the largest,
    # r7g.2xlarge, 52.82 x 0.7 = 37 GiB, does; at 200 msg/s it is 65 GiB): one line.
    day = replace(
        load,
        messages_per_second=200,
        recovery=replace(hour, window_seconds=86_400, max_messages=100_000_000),
    )
    with pytest.raises(PlanError, match="recovery stream"):
        plan(day, CAPACITY, REDIS, CATALOG)


def test_iofleet_plan_prints_the_stream_unless_told_not_to() -> None:
    args = ["plan", "--connections", "20000", "--messages-per-second", "1000"]
    on = CliRunner().invoke(app, args, env={"COLUMNS": "200"})
    assert on.exit_code == 0, on.output
    assert "recovery stream memory (MiB)" in on.output and "Redis recovery writes/s" in on.output
    off = CliRunner().invoke(app, [*args, "--no-recovery"], env={"COLUMNS": "200"})
    assert off.exit_code == 0 and "recovery stream" not in off.output


def test_recovery_adds_its_script_to_redis_cpu_per_message_by_hand() -> None:
    # 10,000 connections: 3 servers, 5 at most (ceil(3 x 1.5)), so a PUBLISH costs
    # 3 + 0.3 x min(fanout 10, 5) = 4.5 µs; the script 2.5 µs more.
    redis = replace(REDIS, recovery_cpu_us_per_message=2.5)
    on = Load(connections=10_000, messages_per_second=1000, fanout=10)
    off = replace(on, recovery=Recovery(enabled=False))
    by_name = {
        name: {f.name: f.value for f in plan(load, CAPACITY, redis, CATALOG).regions[0].figures}
        for name, load in (("on", on), ("off", off))
    }
    assert by_name["off"]["Redis CPU per message"] == "4.50 µs"
    assert by_name["on"]["Redis CPU per message"] == "7.00 µs"
