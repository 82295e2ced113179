"""Write `iofleet/data/capacity_profile.yaml`, the planner's defaults, from what the
benchmarks measured on this machine, with provenance (commands, machine, date, commit).

    python -m bench.fanout_bench --runs 3 --only iofleet --xnode-rate 0
    python -m bench.redis_bench --runs 3
    python -m bench.hundred_k --only iofleet --connections 19000 --servers 1
    python -m bench.capacity_profile

`--only heartbeat` rewrites just the heartbeat figure (and its provenance) in the
profile already there, from `bench/results/hundred_k.json`.

Server figures come from `bench/results/fanout_bench.json` (iofleet's medians):
memory per idle connection and base RSS; CPU per broadcast delivery; CPU per event
(an echo round trip: the event in and its ack out); the connections one process held.
Heartbeat CPU (a ping out and its pong in, per idle connection) from
`bench/results/hundred_k.json`: the servers' idle CPU over the pings they sent.
Redis figures from `bench/results/redis_bench.json`: a line `a + b x subscribers`
through the largest CPU per message seen at each subscriber count (any topology, any
room spread), so the planner's Redis cost is never below what was measured.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any

import psutil
from ruamel.yaml import YAML

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
PROFILE = REPO / "iofleet" / "data" / "capacity_profile.yaml"
FANOUT_COMMAND = "python -m bench.fanout_bench --runs 3 --only iofleet --xnode-rate 0"
REDIS_COMMAND = "python -m bench.redis_bench --runs 3"
HEARTBEAT_COMMAND = "python -m bench.hundred_k"
RECOVERY_COMMAND = "python -m bench.recovery_cluster --runs 3"

# What Redis writes to a subscribing node for one chat:message: redis-cli MONITOR of a
# local server showed 230 bytes of envelope for a 2-character text on its 26-byte room
# channel (`iofleet#room#/#support-42`); with a 30-character text and the RESP push
# framing (`*3`, "message", the channel), about 320 bytes.
DELIVERY_BYTES = 320

HEADER = """\
# What `iofleet plan` plans with when no --capacity file is given: figures this project
# measured, each with the command and machine behind it. Written by
# `python -m bench.capacity_profile` from the benchmarks' results; do not edit by hand.
# Measure your own hardware with `iofleet loadtest --find-capacity` and pass the file
# with `iofleet plan --capacity`: it replaces the server figures it has.
"""


def median(runs: list[dict[str, float]], key: str) -> float:
    return float(statistics.median(run[key] for run in runs))


def server_figures(fanout: dict[str, Any]) -> dict[str, float | int]:
    runs = fanout["runs"]["iofleet"]
    return {
        # The most connections one process held in the run (a process here may open at
        # most 20,000 files, so the bench cannot show a larger figure on this machine).
        "connections_per_server": int(fanout["args"]["connections"]),
        "memory_per_connection_mb": round(median(runs, "rss_kib_per_conn") * 1024 / 1e6, 6),
        "base_memory_mb": round(median(runs, "base_rss_mib") * 2**20 / 1e6, 1),
        "event_cpu_us": round(median(runs, "cpu_us_per_echo"), 2),
        "delivery_cpu_us": round(median(runs, "cpu_s_per_100k") * 10, 3),
    }


def heartbeat_figure(hundred_k: dict[str, Any]) -> float:
    result = hundred_k["results"]["iofleet"]
    return round(float(result["heartbeat_cpu_us_per_ping"]), 1)


def heartbeat_provenance(hundred_k: dict[str, Any]) -> str:
    args, result = hundred_k["args"], hundred_k["results"]["iofleet"]
    return (
        f"{HEARTBEAT_COMMAND} --connections {args['connections']} --servers {args['servers']} "
        f"({result['connections']:,} idle connections, {args['idle_seconds']:g} s of idle CPU, "
        f"{datetime.date.today().isoformat()})"
    )


def recovery_figure(recovery: dict[str, Any]) -> float:
    """Redis CPU a recoverable emit costs beyond a plain PUBLISH (one Redis, same run)."""
    medians = recovery["medians"]
    script = float(medians["one Redis"]["redis_cpu_us_per_emit"])
    plain = float(medians["one Redis, PUBLISH (recovery off)"]["redis_cpu_us_per_emit"])
    return round(max(script - plain, 0.0), 3)


def redis_figures(bench: dict[str, Any]) -> dict[str, float]:
    worst: dict[int, float] = {}
    for key, figures in bench["medians"].items():
        _, subscribers, _ = key.split(":")
        s = int(subscribers)
        worst[s] = max(worst.get(s, 0.0), figures["redis_cpu_us_per_message"])
    xs, ys = zip(*sorted(worst.items()), strict=True)
    if len(xs) < 2:
        raise SystemExit("redis_bench results need at least two subscriber counts")
    mean_x, mean_y = statistics.fmean(xs), statistics.fmean(ys)
    slope = sum((x - mean_x) * (y - mean_y) for x, y in zip(xs, ys, strict=True)) / sum(
        (x - mean_x) ** 2 for x in xs
    )
    slope = max(slope, 0.0)
    # Shift the line up until no measured point lies above it.
    intercept = max(y - slope * x for x, y in zip(xs, ys, strict=True))
    return {
        "cpu_us_per_message": round(intercept, 3),
        "cpu_us_per_subscriber": round(slope, 4),
        "delivery_bytes": DELIVERY_BYTES,
    }


def provenance(fanout: dict[str, Any]) -> dict[str, Any]:
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False,
        cwd=REPO,
    ).stdout.strip()  # fmt: skip
    return {
        "date": datetime.date.today().isoformat(),
        "commit": commit or "unknown",
        "machine": (
            f"{os.cpu_count()} cores {platform.machine()}, "
            f"{psutil.virtual_memory().total / 2**30:.0f} GiB, Python {platform.python_version()}"
            f", {platform.system()} {platform.release()}"
        ),
        "server": f"{FANOUT_COMMAND} (server pinned to one core; medians of "
        f"{len(fanout['runs']['iofleet'])} runs)",
        "redis": REDIS_COMMAND,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=PROFILE)
    parser.add_argument("--note", help="conditions of the run (load on the machine, ...)")
    parser.add_argument(
        "--only", choices=["heartbeat", "recovery"], help="rewrite only this figure"
    )
    args = parser.parse_args()
    yaml = YAML()
    yaml.default_flow_style = False
    if args.only == "heartbeat":
        hundred_k = json.loads((RESULTS / "hundred_k.json").read_text())
        profile = yaml.load(args.out.read_text())
        profile["server"]["heartbeat_cpu_us"] = heartbeat_figure(hundred_k)
        profile["provenance"]["heartbeat"] = heartbeat_provenance(hundred_k)
    elif args.only == "recovery":
        recovery = json.loads((RESULTS / "recovery_cluster.json").read_text())
        profile = yaml.load(args.out.read_text())
        profile["redis"]["recovery_cpu_us_per_message"] = recovery_figure(recovery)
        profile["provenance"]["recovery"] = f"{RECOVERY_COMMAND} ({datetime.date.today()})"
    else:
        hundred_k = json.loads((RESULTS / "hundred_k.json").read_text())
        recovery = json.loads((RESULTS / "recovery_cluster.json").read_text())
        fanout = json.loads((RESULTS / "fanout_bench.json").read_text())
        redis_bench = json.loads((RESULTS / "redis_bench.json").read_text())
        profile = {
            "provenance": {
                **provenance(fanout),
                "heartbeat": heartbeat_provenance(hundred_k),
                "recovery": f"{RECOVERY_COMMAND} ({datetime.date.today()})",
                **({"note": args.note} if args.note else {}),
            },
            "server": {**server_figures(fanout), "heartbeat_cpu_us": heartbeat_figure(hundred_k)},
            "redis": {
                **redis_figures(redis_bench),
                "recovery_cpu_us_per_message": recovery_figure(recovery),
            },
        }
    with args.out.open("w") as out:
        if args.only is None:
            out.write(HEADER)  # a profile read back keeps its header as a comment
        yaml.dump(profile, out)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
