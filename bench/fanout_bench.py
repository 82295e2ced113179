"""Fan-out benchmark: plain python-socketio, Node socket.io 4.8, iofleet, raw aiohttp; one run.

Every server runs the same app (`bench.bench_app`, `bench/node_server.mjs`: the
chat app plus `echo`) with Redis fan-out (python-socketio's `AsyncRedisManager`,
`@socket.io/redis-adapter`, iofleet's own), against the same load generator
(`bench.raw_ws`: bare asyncio protocols, no task per connection). The server is
pinned to one core, the generator and Redis to another. Per server and run:

- connect rate: `--connections` clients (the 10,000-connection case by default)
  connected `--concurrency` at a time, and the server's CPU time per connect
  (which the generator's own speed cannot hold down);
- RSS per idle connection: the server's RSS before and after, over the count;
- broadcast: `--subscribers` of them join one room and one sender sends
  `--messages` `chat:message`s (acks, `--window` in flight); the primary figure
  is the server process's CPU seconds (psutil, user + system) per 100k
  deliveries, then deliveries/s;
- echo: `--echo-clients` clients each doing `echo` round trips for `--echo-seconds`;
- cross-node latency at equal load: a second node of the same server on the same
  Redis; `--xnode-subscribers` on node B in the room, one sender on node A sending
  `chat:message`s paced to `--xnode-rate` deliveries/s for `--xnode-seconds`; each
  message carries its send time, so p50/p99 are from the sender's send to a
  subscriber's receipt (the generator's clock at both ends).

A fourth target, `raw aiohttp` (`bench.raw_aiohttp_server`: aiohttp WebSockets and
no Socket.IO stack), is the transport's floor for memory and connect rate (it
has no cross-node case). The generator's own CPU use during the broadcast and the
connects is printed, to show it is not what limits the figures.

Prints medians over `--runs` (servers alternate order each run) and ratios
against Node and python-socketio; the raw figures go to
`bench/results/fanout_bench.json`. `python -m bench.fanout_bench --runs 3`;
`--recovery` adds iofleet with connection state recovery on (every broadcast
through the Redis Stream script, delivered when it comes back).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.raw_ws import LatencyTally, RawSocket, Tally, connect
from iofleet.processes import free_port, redis_answers, spawn, stop_pid, tcp_answers, wait_until

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
HOST = "127.0.0.1"
ROOM = "bench"
BROADCAST_EVENT = b"chat:message"
# Wide enough for five columns when the output goes to a file.
console = Console(width=None if sys.stdout.isatty() else 150)


@dataclass(frozen=True)
class Target:
    """A server to measure; `{port}` and `{redis}` in its command or env are filled in."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)
    cwd: Path = REPO  # where `python -m server` finds the server package
    cross_node: bool = True  # runs as a fleet of two behind one Redis


IOFLEET_ENV = {
    "IOFLEET_HOST": HOST,
    "IOFLEET_PORT": "{port}",
    "IOFLEET_ADMIN_PORT": "0",
    "IOFLEET_AUTH": "none",
    "IOFLEET_NODE_ID": "bench",
    "IOFLEET_LOG_LEVEL": "WARNING",
    "IOFLEET_REDIS_URL": "{redis}",
    "IOFLEET_HANDLERS": "bench.bench_app:register",
    # Measure the fan-out, not the guards' limits: one sender sends as fast as it can.
    "IOFLEET_RATE_LIMIT": "1000000",
    "IOFLEET_MAX_CONNECTIONS": "1000000",
    "IOFLEET_MAX_ROOMS_PER_USER": "1000000",
}
NODE = "node socket.io"
RECOVERY = "iofleet recovery"
BASELINE = "python-socketio"
RAW = "raw aiohttp"
TARGETS = (
    Target(
        BASELINE,
        (sys.executable, "-m", "bench.baseline_server", "{port}", "--redis", "{redis}"),
    ),
    Target(NODE, ("node", str(REPO / "bench" / "node_server.mjs"), "{port}", "{redis}")),
    Target("iofleet", (sys.executable, "-m", "server"), IOFLEET_ENV),
    # The transport's floor: aiohttp WebSockets with no Socket.IO stack, one node.
    Target(RAW, (sys.executable, "-m", "bench.raw_aiohttp_server", "{port}"), cross_node=False),
)
METRICS = (
    # key, column title, format, higher is better
    ("cpu_s_per_100k", "CPU s / 100k deliveries", "{:.2f}", False),
    ("deliveries_per_s", "deliveries/s", "{:,.0f}", True),
    ("rss_kib_per_conn", "RSS / idle conn (KiB)", "{:.1f}", False),
    ("connects_per_s", "connects/s", "{:,.0f}", True),
    ("cpu_us_per_connect", "server CPU µs / connect", "{:.0f}", False),
    ("echo_per_s", "echo round trips/s", "{:,.0f}", True),
    ("cpu_us_per_echo", "server CPU µs / echo", "{:.1f}", False),
    ("base_rss_mib", "base RSS (MiB)", "{:.0f}", False),
    ("xnode_p99_ms", "cross-node p99 (ms)", "{:.1f}", False),
    ("xnode_p50_ms", "cross-node p50 (ms)", "{:.1f}", False),
)


def pin(cores: set[int]) -> None:
    with contextlib.suppress(OSError):
        os.sched_setaffinity(0, cores)


def core_split() -> tuple[set[int], set[int]]:
    """(server core, generator cores): the server alone on one core. Decided once,
    before this process pins itself to the generator cores (asked again after
    that, it would see one core and put the server on it too)."""
    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        return {cores[0]}, {cores[0]}
    return {cores[0]}, set(cores[1:])


@contextlib.contextmanager
def running(
    argv: list[str],
    env: dict[str, str],
    log: Path,
    cores: set[int],
    ready: str,
    port: int,
    cwd: Path = REPO,
) -> Iterator[subprocess.Popen[bytes]]:
    process = spawn(argv, log, env=env, cwd=cwd)
    try:
        with contextlib.suppress(OSError):
            os.sched_setaffinity(process.pid, cores)
        check = (
            (lambda: redis_answers(port)) if ready == "redis" else (lambda: tcp_answers(HOST, port))
        )
        wait_until(check, 30, argv[0], process=process, log_path=log)
        yield process
    finally:
        stop_pid(process.pid, grace=5, process=process)


def cpu_seconds(process: psutil.Process) -> float:
    times = process.cpu_times()
    return float(times.user + times.system)


async def emit_at_rate(sender: RawSocket, interval: float, count: int) -> None:
    """`count` chat messages to ROOM, one every `interval` seconds (paced on the loop's
    clock, not slept per message), each carrying its send time for the latency tally."""
    loop = asyncio.get_running_loop()
    next_at = loop.time()
    for _ in range(count):
        sender.emit("chat:message", {"room": ROOM, "text": str(time.perf_counter_ns())})
        next_at += interval
        await asyncio.sleep(max(0.0, next_at - loop.time()))


async def open_many(port: int, tally: Tally, count: int, concurrency: int) -> list[RawSocket]:
    sockets: list[RawSocket] = []
    gate = asyncio.Semaphore(concurrency)

    async def one() -> None:
        async with gate:
            sockets.append(await connect(HOST, port, tally))

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 300)
    return sockets


async def joined(sockets: list[RawSocket], concurrency: int = 200) -> None:
    gate = asyncio.Semaphore(concurrency)

    async def one(sock: RawSocket) -> None:
        async with gate:
            reply = await asyncio.wait_for(sock.call("room:join", {"room": ROOM}), 60)
            if not reply[0].get("ok"):
                raise RuntimeError(f"join refused: {reply}")

    await asyncio.gather(*(one(s) for s in sockets))


async def measure(port: int, server: psutil.Process, args: argparse.Namespace) -> dict[str, float]:
    tally = Tally(BROADCAST_EVENT)
    warm = await open_many(port, tally, 20, 20)
    await asyncio.sleep(0.5)
    rss_before = server.memory_info().rss
    generator = psutil.Process()
    gen_before, server_before = cpu_seconds(generator), cpu_seconds(server)
    started = time.perf_counter()
    idle = await open_many(port, tally, args.connections, args.concurrency)
    connect_s = time.perf_counter() - started
    server_connect_s = cpu_seconds(server) - server_before
    gen_connect = (cpu_seconds(generator) - gen_before) / connect_s
    await asyncio.sleep(1.0)
    rss_after = server.memory_info().rss

    # Broadcast: the subscribers and the sender in one room; deliveries counted as received.
    subscribers = idle[: args.subscribers]
    sender = warm[0]
    await joined([*subscribers, sender])
    await asyncio.sleep(0.3)
    deliveries = (len(subscribers) + 1) * args.messages
    tally.expect(deliveries)
    gen_before = cpu_seconds(generator)
    cpu_before = cpu_seconds(server)
    started = time.perf_counter()
    text = "x" * args.text_bytes
    for first in range(0, args.messages, args.window):
        batch = range(first, min(first + args.window, args.messages))
        replies = await asyncio.wait_for(
            asyncio.gather(
                *(sender.call("chat:message", {"room": ROOM, "text": text}) for _ in batch)
            ),
            120,
        )
        if not all(r[0].get("ok") for r in replies):
            raise RuntimeError(f"broadcast refused: {replies[0]}")
    await asyncio.wait_for(tally.reached.wait(), 300)
    broadcast_s = time.perf_counter() - started
    cpu_used = cpu_seconds(server) - cpu_before
    gen_used = cpu_seconds(generator) - gen_before

    # Echo round trips: each client one call at a time, for a fixed time.
    echoers = (
        idle[args.subscribers : args.subscribers + args.echo_clients] or idle[: args.echo_clients]
    )
    stop_at = time.perf_counter() + args.echo_seconds
    trips = 0

    async def echo_loop(sock: RawSocket) -> None:
        nonlocal trips
        while time.perf_counter() < stop_at:
            await sock.call("echo", {"n": trips})
            trips += 1

    gen_before, server_before = cpu_seconds(generator), cpu_seconds(server)
    echo_started = time.perf_counter()
    # One bound for the whole phase: a timeout per call would cost the generator
    # a timer and a waiter per round trip.
    async with asyncio.timeout(args.echo_seconds + 30):
        await asyncio.gather(*(echo_loop(s) for s in echoers))
    echo_s = time.perf_counter() - echo_started
    gen_echo = (cpu_seconds(generator) - gen_before) / echo_s
    server_echo_s = cpu_seconds(server) - server_before

    for sock in [*warm, *idle]:
        sock.close()
    await asyncio.sleep(0.5)
    return {
        "cpu_s_per_100k": cpu_used / deliveries * 100_000,
        "deliveries_per_s": deliveries / broadcast_s,
        "rss_kib_per_conn": (rss_after - rss_before) / args.connections / 1024,
        "connects_per_s": args.connections / connect_s,
        "cpu_us_per_connect": server_connect_s / args.connections * 1e6,
        "echo_per_s": trips / echo_s,
        # Server CPU per round trip (an event in, its ack out): the per-event cost the
        # planner's capacity profile uses, which the generator's speed cannot hold down.
        "cpu_us_per_echo": server_echo_s / max(trips, 1) * 1e6,
        # A server process with 20 connections: the planner's base memory.
        "base_rss_mib": rss_before / 2**20,
        "generator_busy": gen_used / broadcast_s,
        "generator_busy_connect": gen_connect,
        "generator_busy_echo": gen_echo,
    }


async def measure_cross_node(
    port_a: int, port_b: int, args: argparse.Namespace
) -> dict[str, float]:
    """Latency from a sender on node A to subscribers on node B, through Redis, at
    `--xnode-rate` deliveries/s (the same load for every server): p50 and p99."""
    tally = LatencyTally(BROADCAST_EVENT)
    subscribers = await open_many(port_b, tally, args.xnode_subscribers, args.concurrency)
    sender_tally = Tally(b"-")  # the sender's own copies are not measured
    sender = (await open_many(port_a, sender_tally, 1, 1))[0]
    await joined([*subscribers, sender])
    await asyncio.sleep(0.5)  # node A hears of the room's members on node B
    interval = len(subscribers) / args.xnode_rate  # seconds between messages
    count = max(1, int(args.xnode_seconds / interval))
    tally.expect(count * len(subscribers))
    await emit_at_rate(sender, interval, count)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.reached.wait(), 30)
    for sock in [*subscribers, sender]:
        sock.close()
    await asyncio.sleep(0.3)
    got = sorted(tally.latencies_ms)
    if len(got) < count * len(subscribers):
        raise RuntimeError(f"cross-node: {len(got)} of {count * len(subscribers)} delivered")
    return {
        "xnode_p50_ms": got[len(got) // 2],
        "xnode_p99_ms": got[min(len(got) - 1, int(len(got) * 0.99))],
    }


def run_one(target: Target, args: argparse.Namespace, workdir: Path) -> dict[str, float]:
    server_cores, generator_cores = args.cores
    redis_port, port = free_port(), free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    redis_argv = ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
    redis_argv += ["--appendonly", "no"]
    fill = {"port": str(port), "redis": redis_url}
    argv = [part.format(**fill) for part in target.command]
    env = {**os.environ, **{k: v.format(**fill) for k, v in target.env.items()}}
    log = workdir / f"{target.name.replace(' ', '_')}.log"
    redis_log = workdir / "redis.log"
    with (
        running(redis_argv, dict(os.environ), redis_log, generator_cores, "redis", redis_port),
        running(argv, env, log, server_cores, "tcp", port, target.cwd) as process,
    ):
        figures = asyncio.run(measure(port, psutil.Process(process.pid), args))
        if not target.cross_node or args.xnode_rate <= 0:
            return figures
        # A second node on the same Redis; node A is the one measured above.
        port_b = free_port()
        fill_b = {**fill, "port": str(port_b)}
        argv_b = [part.format(**fill_b) for part in target.command]
        env_b = {**os.environ, **{k: v.format(**fill_b) for k, v in target.env.items()}}
        log_b = workdir / f"{target.name.replace(' ', '_')}-b.log"
        with running(argv_b, env_b, log_b, server_cores, "tcp", port_b, target.cwd):
            figures.update(asyncio.run(measure_cross_node(port, port_b, args)))
        return figures


def keep_logs(workdir: Path, target: Target, run: int) -> Path:
    """Copy a failed run's server logs out of the temporary directory."""
    kept = RESULTS / f"fanout-failed-{target.name.replace(' ', '_')}-run{run + 1}"
    kept.mkdir(parents=True, exist_ok=True)
    for log in workdir.glob("*.log"):
        shutil.copy(log, kept / log.name)
    return kept


def ratio(value: float, base: float, higher_is_better: bool) -> str:
    if base == 0 or math.isnan(base) or math.isnan(value):
        return "-"
    return f"{value / base:.2f}x"


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    keys = [key for key, *_ in METRICS]
    keys += ["generator_busy", "generator_busy_connect", "generator_busy_echo"]
    medians = {
        name: {
            key: statistics.median(r[key] for r in runs) if key in runs[0] else math.nan
            for key in keys
        }
        for name, runs in results.items()
        if runs
    }
    table = Table(
        title=f"median of {args.runs} runs; {args.connections} connections, "
        f"{args.subscribers} subscribers x {args.messages} messages, "
        f"{args.echo_clients} echo clients; server on cores {sorted(args.cores[0])}, "
        f"generator and Redis on {sorted(args.cores[1])}"
    )
    table.add_column("figure")
    for name in medians:
        table.add_column(name, justify="right")
    for key, title, fmt, _ in METRICS:
        table.add_row(
            title, *("-" if math.isnan(m[key]) else fmt.format(m[key]) for m in medians.values())
        )
    for base_name in (NODE, BASELINE):
        if base_name not in medians:
            continue
        base = medians[base_name]
        for key, title, _, better in METRICS:
            table.add_row(
                f"{title} vs {base_name}",
                *(ratio(m[key], base[key], better) for m in medians.values()),
            )
    table.add_row(
        "generator CPU busy during broadcast",
        *(f"{m['generator_busy']:.0%}" for m in medians.values()),
    )
    table.add_row(
        "generator CPU busy during connects",
        *(f"{m['generator_busy_connect']:.0%}" for m in medians.values()),
    )
    table.add_row(
        "generator CPU busy during echo",
        *(f"{m['generator_busy_echo']:.0%}" for m in medians.values()),
    )
    console.print(table)
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "fanout_bench.json"
    out.write_text(
        json.dumps({"args": vars(args), "runs": results, "medians": medians}, indent=2, default=str)
    )
    console.print(f"raw figures: {out.relative_to(REPO)}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=10_000)
    parser.add_argument("--concurrency", type=int, default=100)
    parser.add_argument("--subscribers", type=int, default=2000)
    parser.add_argument("--messages", type=int, default=200)
    parser.add_argument("--window", type=int, default=20, help="broadcasts in flight")
    parser.add_argument("--text-bytes", type=int, default=32)
    parser.add_argument("--echo-clients", type=int, default=200)
    parser.add_argument("--echo-seconds", type=float, default=3.0)
    parser.add_argument(
        "--xnode-rate",
        type=float,
        default=5000,
        help="cross-node deliveries/s (0: skip the cross-node case)",
    )
    parser.add_argument("--xnode-subscribers", type=int, default=200)
    parser.add_argument("--xnode-seconds", type=float, default=4.0)
    parser.add_argument("--only", action="append", help="measure only these targets")
    parser.add_argument(
        "--recovery",
        action="store_true",
        help="also measure iofleet with connection state recovery on (IOFLEET_RECOVERY=true)",
    )
    parser.add_argument(
        "--compare-tree",
        type=Path,
        help="also measure iofleet as checked out in this directory (before/after a change)",
    )
    args = parser.parse_args()
    if args.subscribers > args.connections:
        parser.error("--subscribers must not exceed --connections")
    if shutil.which("node") is None or not (REPO / "node_modules" / "socket.io").is_dir():
        parser.error("Node and `npm ci` (socket.io, @socket.io/redis-adapter) are required")

    # A SIGTERM unwinds like Ctrl-C, so every server and Redis started is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    candidates = list(TARGETS)
    if args.recovery:
        env = {**IOFLEET_ENV, "IOFLEET_RECOVERY": "true"}
        candidates.append(Target(RECOVERY, (sys.executable, "-m", "server"), env))
    targets = [t for t in candidates if not args.only or t.name in args.only]
    if args.compare_tree is not None:
        tree = args.compare_tree.resolve()
        if not (tree / "server" / "__main__.py").is_file():
            parser.error(f"--compare-tree {tree}: no server/ package there")
        targets.append(
            Target(f"iofleet@{tree.name}", (sys.executable, "-m", "server"), IOFLEET_ENV, tree)
        )
    args.cores = core_split()
    pin(args.cores[1])
    results: dict[str, list[dict[str, float]]] = {t.name: [] for t in targets}
    failures = {t.name: 0 for t in targets}
    with (
        tempfile.TemporaryDirectory(prefix="fanout-bench-") as tmp,
        Progress(console=console, transient=True) as progress,
    ):
        task = progress.add_task("benchmark", total=args.runs * len(targets))
        for run in range(args.runs):
            # Alternate the order so drift on a shared machine hits everyone alike.
            order = targets if run % 2 == 0 else list(reversed(targets))
            for target in order:
                progress.update(task, description=f"run {run + 1}/{args.runs}: {target.name}")
                try:
                    results[target.name].append(run_one(target, args, Path(tmp)))
                except (RuntimeError, TimeoutError, OSError) as error:
                    # One failed run (a connect timing out on a loaded machine, say) is
                    # reported with its server logs kept; the other runs still count.
                    kept = keep_logs(Path(tmp), target, run)
                    console.print(
                        f"[red]run {run + 1} of {target.name} failed: "
                        f"{type(error).__name__}: {error}; server logs in {kept}"
                    )
                    failures[target.name] += 1
                progress.advance(task)
    report(results, args)
    for name, failed in failures.items():
        if failed:
            console.print(f"[red]{name}: {failed} of {args.runs} runs failed (not in the medians)")


if __name__ == "__main__":
    main()
