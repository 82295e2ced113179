"""Join benchmark: 10,000 connections joining rooms, joins per second.

Runs plain python-socketio (the baseline, same chat app) and iofleet's server
in the same run, alternating, both without auth (so every iofleet connection
is the same anonymous user: the case that used to cost O(connections²)), and
prints medians and ratios against the baseline.
`make bench` or `python -m bench.join_bench [--runs 3] [--connections 10000]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import resource
import statistics
import time

import aiohttp
from rich.progress import Progress
from rich.table import Table

from bench.server_bench import REPO, RESULTS, TARGETS, Target, console, free_port, open_clients
from bench.server_bench import start as start_server
from bench.wire import WireClient

JOIN_TARGETS = tuple(t for t in TARGETS if t.name in ("python-socketio", "iofleet"))
# Joins in flight at once: enough to keep the server busy, few enough to
# measure the server rather than the load generator's queueing.
JOINS_IN_FLIGHT = 100


def raise_fd_limit(connections: int) -> None:
    """Client sockets here and server sockets in the child (which inherits it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    wanted = min(hard, connections + 1024)
    if soft < wanted:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    if wanted < connections + 256:
        raise SystemExit(f"file-descriptor hard limit {hard} is too low for {connections}")


async def join_all(clients: list[WireClient], rooms: int, budget_s: float) -> tuple[int, float]:
    """Every client joins room `r<i mod rooms>`; (joins acked, seconds), within the budget."""
    semaphore = asyncio.Semaphore(JOINS_IN_FLIGHT)
    done = 0

    async def join(index: int, client: WireClient) -> None:
        nonlocal done
        async with semaphore:
            reply = await client.emit("room:join", {"room": f"r{index % rooms}"}, ack=True)
            assert reply[0]["ok"], reply
            done += 1

    started = time.perf_counter()
    tasks = [asyncio.create_task(join(i, c)) for i, c in enumerate(clients)]
    _, pending = await asyncio.wait(tasks, timeout=budget_s)
    elapsed = time.perf_counter() - started
    for task in pending:
        task.cancel()
    return done, elapsed


async def measure(target: Target, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    process = start_server(target, port)
    try:
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            clients = await open_clients(session, f"http://127.0.0.1:{port}", args.connections)
            joined, elapsed = await join_all(clients, args.rooms, args.budget)
            await asyncio.gather(*(c.close() for c in clients))
        return {"joins": joined, "seconds": elapsed, "joins_per_s": joined / elapsed}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except Exception:
            process.kill()
            process.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--rooms", type=int, default=100, help="rooms the joins spread over")
    parser.add_argument("--budget", type=float, default=120.0, help="seconds allowed per run")
    args = parser.parse_args()
    raise_fd_limit(args.connections)

    names = [t.name for t in JOIN_TARGETS]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("join benchmark", total=args.runs * len(names))
        for run in range(args.runs):
            order = names if run % 2 == 0 else list(reversed(names))
            for name in order:
                progress.update(task, description=f"run {run + 1}/{args.runs}: {name}")
                target = next(t for t in JOIN_TARGETS if t.name == name)
                results[name].append(asyncio.run(measure(target, args)))
                progress.advance(task)

    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    base = medians["python-socketio"]["joins_per_s"]
    table = Table(
        title=f"median of {args.runs} runs; {args.connections} connections joining "
        f"{args.rooms} rooms (chat app room:join, acked), no auth"
    )
    for column in ("server", "joins acked", "joins/s", "vs baseline"):
        table.add_column(column, justify="left" if column == "server" else "right")
    for name, m in medians.items():
        table.add_row(
            name,
            f"{m['joins']:,.0f} / {args.connections:,}",
            f"{m['joins_per_s']:,.0f}",
            f"{m['joins_per_s'] / base:.2f}x",
        )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "join_bench.json"
    out.write_text(json.dumps({"args": vars(args), "runs": results, "medians": medians}, indent=2))
    console.print(f"raw figures: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
