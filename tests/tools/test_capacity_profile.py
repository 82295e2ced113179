"""The planner's shipped capacity profile against what the benchmarks measure here, now:
a small run of each bench (real redis-server, a real `python -m server`) must land near
the profile's figures, so a profile that drifted from the code fails here."""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from bench import fanout_bench, redis_bench
from iofleet.plan import load_profile

PROFILE = load_profile()


def test_redis_cost_per_message_is_near_a_measurement_here() -> None:
    args = argparse.Namespace(messages=20_000, seconds=10.0, window=256, payload_bytes=250)
    with redis_bench.redis_topology(1) as nodes:
        measured = asyncio.run(redis_bench.one_case(nodes, 16, 1, args))
    planned = PROFILE.redis.cost_us(16)
    got = measured["redis_cpu_us_per_message"]
    # The profile is a line over the worst case seen, so it may sit above one run, but not
    # far below one (a plan short of Redis) nor far above (a plan that overbuys shards).
    assert got * 0.6 <= planned <= got * 4, (planned, measured)


def test_server_memory_per_connection_is_near_a_measurement_here(tmp_path: Path) -> None:
    target = next(t for t in fanout_bench.TARGETS if t.name == "iofleet")
    args = argparse.Namespace(
        connections=3000, concurrency=100, subscribers=200, messages=20, window=10,
        text_bytes=32, echo_clients=50, echo_seconds=1.0, xnode_rate=0,
        cores=(set(os.sched_getaffinity(0)), set(os.sched_getaffinity(0))),
    )  # fmt: skip
    figures = fanout_bench.run_one(target, args, tmp_path)
    per_connection_mb = figures["rss_kib_per_conn"] * 1024 / 1e6
    planned = PROFILE.capacity.memory_per_connection_mb
    assert per_connection_mb * 0.7 <= planned <= per_connection_mb * 1.5, figures
    base_mb = figures["base_rss_mib"] * 2**20 / 1e6
    assert base_mb * 0.7 <= PROFILE.capacity.base_memory_mb <= base_mb * 1.5, figures
