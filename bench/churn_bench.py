"""Churn benchmark: what a server still holds after a storm of short-lived connections.

A storm of `--connections` (20,000) short-lived connections, `--concurrency` (50) at a
time, each opening, sending Socket.IO CONNECT and closing at once (`--kinds` picks
other kinds from `bench.short_lived`), against plain python-socketio (the baseline)
and iofleet in the same run. From inside each server (`bench.resource_probe`) it
reads the asyncio tasks and Engine.IO sockets it holds, and from outside its RSS:
before, right after the storm, and every few seconds up to `--settle` (60) s after.
`make bench` or `python -m bench.churn_bench [--connections 20000] [--runs 1]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import psutil
import socketio
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.resource_probe import PROBE_EVENT
from bench.server_bench import IOFLEET_ENV, REPO, RESULTS, Target, start
from bench.short_lived import KINDS, Endpoint, storm
from iofleet.processes import free_port

# Wide enough for the table when the output is a file or a pipe.
console = Console(width=max(120, Console().width))

TARGETS = (
    Target(
        "python-socketio",
        (sys.executable, "-m", "bench.baseline_server", "{port}", "--probe"),
    ),
    Target(
        "iofleet",
        (sys.executable, "-m", "server"),
        {**IOFLEET_ENV, "IOFLEET_HANDLERS": "bench.resource_probe:chat_with_probe"},
    ),
)
SPARK = " ▁▂▃▄▅▆▇█"


@dataclass
class Sample:
    at_s: float  # seconds after the storm ended
    tasks: int
    eio_sockets: int
    rss_mib: float


@dataclass
class Outcome:
    target: str
    storm_s: float
    failures: int
    before: Sample
    after: list[Sample] = field(default_factory=list)

    @property
    def right_after(self) -> Sample:
        return self.after[0]

    @property
    def settled(self) -> Sample:
        return self.after[-1]


async def sample(probe: socketio.AsyncClient, process: psutil.Process, at_s: float) -> Sample:
    held: dict[str, int] = await probe.call(PROBE_EVENT, timeout=30)
    return Sample(
        at_s=round(at_s, 1),
        # The probe's own connection and its event handler are not the storm's.
        tasks=held["tasks"],
        eio_sockets=held["eio_sockets"],
        rss_mib=process.memory_info().rss / 2**20,
    )


async def measure(target: Target, args: argparse.Namespace, progress: Progress) -> Outcome:
    port = free_port()
    process = start(target, port)
    url = f"http://127.0.0.1:{port}"
    probe = socketio.AsyncClient()
    try:
        server = psutil.Process(process.pid)
        await probe.connect(url, transports=["websocket"], wait_timeout=10)
        await asyncio.sleep(1.0)
        before = await sample(probe, server, -1.0)
        kinds = list(KINDS) if args.kinds == "all" else args.kinds.split(",")
        bar = progress.add_task(f"{target.name}: storm", total=args.connections)
        started = time.monotonic()
        failures = await storm(
            Endpoint(url),
            kinds,
            args.connections,
            args.concurrency,
            on_done=lambda: progress.advance(bar),
        )
        storm_s = time.monotonic() - started
        progress.remove_task(bar)
        outcome = Outcome(target.name, storm_s, failures, before)
        ended = time.monotonic()
        outcome.after.append(await sample(probe, server, 0.0))
        settle = progress.add_task(f"{target.name}: {args.settle:.0f} s after", total=args.settle)
        while (elapsed := time.monotonic() - ended) < args.settle:
            await asyncio.sleep(min(args.every, args.settle - elapsed))
            outcome.after.append(await sample(probe, server, time.monotonic() - ended))
            progress.update(settle, completed=min(args.settle, time.monotonic() - ended))
        progress.remove_task(settle)
        return outcome
    finally:
        await probe.disconnect()
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()
            process.wait()


def sparkline(values: list[int], top: int) -> str:
    top = top or 1
    return "".join(SPARK[round(v / top * (len(SPARK) - 1))] for v in values)


def report(outcomes: dict[str, list[Outcome]], args: argparse.Namespace) -> dict[str, Any]:
    def median(name: str, pick: Any) -> float:
        return statistics.median(pick(o) for o in outcomes[name])

    rows: dict[str, dict[str, float]] = {}
    for name in outcomes:
        rows[name] = {
            "connections_per_s": median(name, lambda o: args.connections / o.storm_s),
            "failures": median(name, lambda o: o.failures),
            "tasks_before": median(name, lambda o: o.before.tasks),
            "tasks_right_after": median(name, lambda o: o.right_after.tasks),
            "tasks_settled": median(name, lambda o: o.settled.tasks),
            "sockets_right_after": median(name, lambda o: o.right_after.eio_sockets),
            "sockets_settled": median(name, lambda o: o.settled.eio_sockets),
            "rss_before_mib": median(name, lambda o: o.before.rss_mib),
            "rss_right_after_mib": median(name, lambda o: o.right_after.rss_mib),
            "rss_settled_mib": median(name, lambda o: o.settled.rss_mib),
        }
    base = rows["python-socketio"]
    table = Table(
        title=f"median of {args.runs} run(s): {args.connections} short-lived connections "
        f"({args.kinds}), {args.concurrency} at a time; 'later' = {args.settle:.0f} s after"
    )
    for column in (
        "server",
        "conn/s",
        "tasks: before > after > later",
        "EIO sockets: after > later",
        "RSS MiB: before > after > later",
        "RSS growth vs baseline",
    ):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, r in rows.items():
        growth = r["rss_settled_mib"] - r["rss_before_mib"]
        base_growth = base["rss_settled_mib"] - base["rss_before_mib"]
        table.add_row(
            name,
            f"{r['connections_per_s']:,.0f}",
            f"{r['tasks_before']:.0f} > {r['tasks_right_after']:,.0f} > {r['tasks_settled']:,.0f}",
            f"{r['sockets_right_after']:,.0f} > {r['sockets_settled']:,.0f}",
            f"{r['rss_before_mib']:.0f} > {r['rss_right_after_mib']:.0f} > "
            f"{r['rss_settled_mib']:.0f}",
            f"{growth / base_growth:.2f}x" if base_growth > 0 else "-",
        )
    console.print(table)
    console.print(f"asyncio tasks over the {args.settle:.0f} s after the storm (last run):")
    series = {name: [s.tasks for s in runs[-1].after] for name, runs in outcomes.items()}
    top = max(max(tasks) for tasks in series.values())  # one scale: the lines compare
    for name, tasks in series.items():
        console.print(f"  {name:>16} {sparkline(tasks, top)}  {tasks[0]:,} -> {tasks[-1]:,}")
    failures = {name: r["failures"] for name, r in rows.items() if r["failures"]}
    if failures:
        console.print(f"[yellow]connections that failed (median): {failures}[/yellow]")
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=1)
    parser.add_argument("--connections", type=int, default=20000)
    parser.add_argument("--concurrency", type=int, default=50)
    parser.add_argument("--kinds", default="ws_connect_close", help="comma list or 'all'")
    parser.add_argument("--settle", type=float, default=60.0, help="seconds to watch after")
    parser.add_argument("--every", type=float, default=2.0, help="seconds between samples")
    args = parser.parse_args()
    if args.kinds != "all" and not set(args.kinds.split(",")) <= set(KINDS):
        parser.error(f"--kinds: choose from {', '.join(KINDS)} or 'all'")

    outcomes: dict[str, list[Outcome]] = {t.name: [] for t in TARGETS}

    async def run_all() -> None:
        with Progress(console=console, transient=True) as progress:
            for run in range(args.runs):
                # Alternate the order so drift on a shared machine hits everyone alike.
                order = TARGETS if run % 2 == 0 else tuple(reversed(TARGETS))
                for target in order:
                    outcomes[target.name].append(await measure(target, args, progress))

    asyncio.run(run_all())
    rows = report(outcomes, args)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "churn_bench.json"
    raw = {
        name: [
            {
                "storm_s": o.storm_s,
                "failures": o.failures,
                "before": vars(o.before),
                "after": [vars(s) for s in o.after],
            }
            for o in runs
        ]
        for name, runs in outcomes.items()
    }
    out.write_text(json.dumps({"args": vars(args), "medians": rows, "runs": raw}, indent=2))
    console.print(f"raw figures: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
