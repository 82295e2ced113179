"""100,000 connections on one machine: several server processes, as pods on one node.

A process here may open at most 20,000 files, so the connections are spread over
`--servers` processes (6 by default, about 16,700 each) sharing one Redis, with one
generator process per server (`bench.raw_ws` protocols, the official Engine.IO v4 /
Socket.IO v5 wire, each generator from its own 127.0.0.x source address). iofleet and
Node socket.io 4.8 (`bench/node_server.mjs`) run the same app, one after the other.

Per target it prints:
- RSS per connection over all servers (RSS at rest minus each process's base RSS,
  over the connections it holds), and per process;
- idle CPU from heartbeats: every server's CPU over `--idle-seconds` (longer than the
  25 s ping interval, so every connection pings at least once), as % of one core;
- a broadcast to one room holding every connection (all servers, through Redis):
  `--broadcasts` messages from one sender, each carrying its send time (the wall
  clock, the same on every process here); time to the last delivery and the p99
  delivery latency over all deliveries.
- the connect p99 while filling (the generators connect `--concurrency` at a time);
- with `--storm`, a reconnect storm: the first server is killed with SIGKILL and its
  clients come back to the others, each after a random delay in `--storm-spread`
  seconds (stock clients back off 0.5-1.5 s, then retry), joining their room again:
  connect p99 (TCP + Engine.IO OPEN + CONNECT + join), how many came back, and how many
  were refused (only the capacity guard, `--max-connections`, should refuse any).

`python -m bench.hundred_k` (both targets, 100,000 connections). `--servers 1
--connections 19000` is the one-process case. Results: `bench/results/hundred_k.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import statistics
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
from rich.console import Console
from rich.table import Table

from bench.fanout_bench import IOFLEET_ENV, REPO, ROOM, running
from bench.raw_ws import LatencyTally, RawSocket, Tally, connect
from iofleet.processes import free_port
from server.contract import PING_INTERVAL_SECONDS

HOST = "127.0.0.1"
EVENT = b"chat:message"
RESULTS = REPO / "bench" / "results" / "hundred_k.json"
CONNECT_ATTEMPTS = 3
console = Console()


# --- the generator process -----------------------------------------------------------


async def open_one(source: str, port: int, tally: Tally) -> RawSocket:
    """One connection from `source`: WebSocket, Engine.IO OPEN, CONNECT, then the join."""
    loop = asyncio.get_running_loop()
    _, sock = await asyncio.wait_for(
        loop.create_connection(
            lambda: RawSocket(tally, HOST, port), HOST, port, local_addr=(source, 0)
        ),
        60,
    )
    await asyncio.wait_for(sock.ready, 60)
    reply = await asyncio.wait_for(sock.call("room:join", {"room": ROOM}), 60)
    if not reply[0].get("ok"):
        sock.close()
        raise RuntimeError(f"join refused: {reply}")
    return sock


async def open_from(
    source: str, port: int, tally: Tally, count: int, concurrency: int
) -> tuple[list[RawSocket], list[float]]:
    gate = asyncio.Semaphore(concurrency)
    sockets: list[RawSocket] = []
    connect_ms: list[float] = []
    failures: Counter[str] = Counter()

    async def one() -> None:
        async with gate:
            # A stock client retries a failed connect; so does this one, and counts it.
            for _ in range(CONNECT_ATTEMPTS):
                started = time.perf_counter()
                try:
                    sockets.append(await open_one(source, port, tally))
                except (ConnectionError, OSError, RuntimeError) as error:
                    failures[f"{type(error).__name__}: {str(error)[:60]}"] += 1
                    continue
                connect_ms.append((time.perf_counter() - started) * 1000)
                return

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 900)
    if failures:
        print(f"connect attempts that failed: {dict(failures)}", file=sys.stderr, flush=True)
    return sockets, connect_ms


async def storm(
    source: str, ports: list[int], sockets: list[RawSocket], spread: float
) -> dict[str, Any]:
    """Bring back every one of `sockets` whose server died, to the servers at `ports`
    (round robin), each after a random delay in [0, spread] s, as a fleet of stock
    clients does after their node is killed."""
    await asyncio.wait_for(asyncio.gather(*(s.closed for s in sockets)), 60)
    killed_at = time.perf_counter()
    tally = Tally(EVENT)
    connect_ms: list[float] = []
    refused: Counter[str] = Counter()
    back: list[RawSocket] = []

    async def one(index: int) -> None:
        await asyncio.sleep(random.uniform(0, spread))
        started = time.perf_counter()
        try:
            back.append(await open_one(source, ports[index % len(ports)], tally))
        except Exception as error:  # a refusal is a result here, counted by its kind
            refused[f"{type(error).__name__}: {str(error)[:60]}"] += 1
            return
        connect_ms.append((time.perf_counter() - started) * 1000)

    await asyncio.wait_for(asyncio.gather(*(one(i) for i in range(len(sockets)))), 300)
    connect_ms.sort()
    for sock in back:
        sock.close()
    return {
        "storm_clients": len(sockets),
        "storm_reconnected": len(back),
        "storm_refused": sum(refused.values()),
        "storm_refusals": dict(refused),
        "storm_connect_p50_ms": percentile(connect_ms, 0.5),
        "storm_connect_p99_ms": percentile(connect_ms, 0.99),
        "storm_all_back_seconds": time.perf_counter() - killed_at,
    }


async def generator(args: argparse.Namespace) -> None:
    """Connect and join, say `ready`, then count `--broadcasts` deliveries to each."""
    # The sender is the orchestrator, another process: the wall clock on both sides.
    tally = LatencyTally(EVENT, clock=time.time_ns)
    sockets, connect_ms = await open_from(
        args.source, args.port, tally, args.count, args.concurrency
    )
    connect_ms.sort()
    print(json.dumps({"ready": len(sockets), "connect_ms": connect_ms[::10]}), flush=True)
    reader = asyncio.StreamReader()
    loop = asyncio.get_running_loop()
    await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
    await reader.readline()  # "go": the broadcasts start
    tally.expect(args.broadcasts * len(sockets))
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.reached.wait(), args.timeout)
    lost = [s for s in sockets if s.closed.done()]
    # 1,000 evenly spaced order statistics stand for this generator's latencies: the
    # generators hold equal shares, so their samples pooled give the fleet's quantiles.
    ordered = sorted(tally.latencies_ms)
    sample = [ordered[i * len(ordered) // 1000] for i in range(1000)] if ordered else []
    print(
        json.dumps(
            {"delivered": tally.count, "lost_connections": len(lost),
             "latencies_ms": [round(x, 2) for x in sample],
             "max_ms": ordered[-1] if ordered else None}
        ),
        flush=True,
    )  # fmt: skip
    command = (await reader.readline()).split()  # "stop", or "storm <port>,<port>..."
    if command and command[0] == b"storm":
        ports = [int(p) for p in command[1].split(b",")]
        print(json.dumps(await storm(args.source, ports, sockets, args.storm_spread)), flush=True)
        await reader.readline()  # "stop"
    for sock in sockets:
        sock.close()


# --- the orchestrator ----------------------------------------------------------------


def server_command(
    target: str, port: int, redis_url: str, max_connections: int | None
) -> tuple[list[str], dict[str, str]]:
    if target == "node":
        node = ["node", str(REPO / "bench" / "node_server.mjs"), str(port), redis_url]
        return node, dict(os.environ)
    fill = {"port": str(port), "redis": redis_url}
    env = {**os.environ, **{k: v.format(**fill) for k, v in IOFLEET_ENV.items()}}
    if max_connections is not None:
        env["IOFLEET_MAX_CONNECTIONS"] = str(max_connections)
    return [sys.executable, "-m", "server"], env


@contextlib.contextmanager
def fleet(
    target: str, servers: int, workdir: Path, max_connections: int | None
) -> Iterator[tuple[list[int], list[psutil.Process]]]:
    redis_port = free_port()
    redis_url = f"redis://{HOST}:{redis_port}/0"
    redis_argv = ["redis-server", "--port", str(redis_port), "--bind", HOST, "--save", ""]
    redis_argv += ["--appendonly", "no", "--client-output-buffer-limit", "pubsub 256mb 128mb 60"]
    all_cores = set(range(psutil.cpu_count() or 1))
    with contextlib.ExitStack() as stack:
        stack.enter_context(
            running(redis_argv, {}, workdir / "redis.log", all_cores, "redis", redis_port)
        )
        ports, processes = [], []
        for index in range(servers):
            port = free_port()
            argv, env = server_command(target, port, redis_url, max_connections)
            process = stack.enter_context(
                running(argv, env, workdir / f"{target}-{index}.log", all_cores, "tcp", port)
            )
            ports.append(port)
            processes.append(psutil.Process(process.pid))
        yield ports, processes


def cpu_seconds(processes: list[psutil.Process]) -> float:
    return float(sum(p.cpu_times().user + p.cpu_times().system for p in processes))


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(len(ordered) * q))] if ordered else float("nan")


async def measure(target: str, args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    per_server = [args.connections // args.servers] * args.servers
    per_server[0] += args.connections - sum(per_server)
    with fleet(target, args.servers, workdir, args.max_connections) as (ports, servers):
        await asyncio.sleep(1.0)
        base_rss = [p.memory_info().rss for p in servers]
        generators = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "bench.hundred_k",
                "generator",
                "--port",
                str(port),
                "--count",
                str(count),
                "--source",
                f"127.0.0.{2 + i}",
                "--concurrency",
                str(args.concurrency),
                "--broadcasts",
                str(args.broadcasts),
                "--timeout",
                str(args.timeout),
                "--storm-spread",
                str(args.storm_spread),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                cwd=REPO,
                limit=2**22,
            )
            for i, (port, count) in enumerate(zip(ports, per_server, strict=True))
        ]
        try:
            return await _run(target, args, ports, servers, base_rss, generators, per_server)
        finally:
            for gen in generators:
                if gen.returncode is None:
                    gen.kill()
            for gen in generators:
                await gen.wait()


async def _run(
    target: str,
    args: argparse.Namespace,
    ports: list[int],
    servers: list[psutil.Process],
    base_rss: list[int],
    generators: list[asyncio.subprocess.Process],
    per_server: list[int],
) -> dict[str, Any]:
    started = time.perf_counter()
    ready = [json.loads(await _line(g, args.timeout * 10)) for g in generators]
    fill_s = time.perf_counter() - started
    held = sum(r["ready"] for r in ready)
    console.print(f"{target}: {held:,} connections joined in {fill_s:.0f} s")
    await asyncio.sleep(2.0)
    rss = [p.memory_info().rss for p in servers]
    idle_before = cpu_seconds(servers)
    await asyncio.sleep(args.idle_seconds)
    idle_cpu = (cpu_seconds(servers) - idle_before) / args.idle_seconds
    # Both servers ping every 25 s unless IOFLEET_PING_INTERVAL says otherwise (Node's
    # socket.io default pingInterval is the same 25,000 ms; its bench server keeps it).
    ping_interval = float(os.environ.get("IOFLEET_PING_INTERVAL", PING_INTERVAL_SECONDS))
    if target == "node":
        ping_interval = PING_INTERVAL_SECONDS
    # The sender talks to the last server: `--storm` kills the first.
    sender = await connect(HOST, ports[-1], Tally(EVENT))
    reply = await asyncio.wait_for(sender.call("room:join", {"room": ROOM}), 30)
    assert reply[0].get("ok"), reply
    for gen in generators:
        assert gen.stdin is not None
        gen.stdin.write(b"go\n")
        await gen.stdin.drain()
    await asyncio.sleep(0.5)
    for _ in range(args.broadcasts):
        ack = await asyncio.wait_for(
            sender.call("chat:message", {"room": ROOM, "text": str(time.time_ns())}), 60
        )
        assert ack[0].get("ok"), ack
        await asyncio.sleep(args.broadcast_gap)
    results = [json.loads(await _line(g, args.timeout + 30)) for g in generators]
    sender.close()
    stormed: dict[str, Any] = {}
    if args.storm:
        servers[0].kill()  # SIGKILL: no drain, the clients find out from the kernel
        console.print(f"{target}: server 0 killed; {per_server[0]:,} clients come back")
        first = generators[0]
        assert first.stdin is not None
        first.stdin.write(b"storm " + ",".join(str(p) for p in ports[1:]).encode() + b"\n")
        await first.stdin.drain()
        stormed = json.loads(await _line(first, 400))
    for gen in generators:
        assert gen.stdin is not None
        gen.stdin.write(b"stop\n")
        await gen.stdin.drain()
    latencies = [x for r in results for x in r["latencies_ms"]]
    connect_ms = [x for r in ready for x in r["connect_ms"]]
    deliveries = sum(r["delivered"] for r in results)
    return {
        "connections": held,
        "servers": len(servers),
        "rss_kib_per_conn": (sum(rss) - sum(base_rss)) / held / 1024,
        "rss_kib_per_conn_by_server": [
            (r - b) / n / 1024 for r, b, n in zip(rss, base_rss, per_server, strict=True)
        ],
        "base_rss_mib": statistics.fmean(base_rss) / 2**20,
        "idle_cpu_percent_of_core": idle_cpu * 100,
        "heartbeat_cpu_us_per_ping": idle_cpu * 1e6 / (held / ping_interval),
        "fill_seconds": fill_s,
        "connect_p99_ms": percentile(connect_ms, 0.99),
        "broadcast_deliveries": deliveries,
        "broadcast_expected": args.broadcasts * held,
        "time_to_last_delivery_ms": max(
            (r["max_ms"] for r in results if r["max_ms"] is not None), default=float("nan")
        ),
        "delivery_p50_ms": percentile(latencies, 0.5),
        "delivery_p99_ms": percentile(latencies, 0.99),
        "lost_connections": sum(r["lost_connections"] for r in results),
        **stormed,
    }


async def _line(process: asyncio.subprocess.Process, timeout: float) -> bytes:
    assert process.stdout is not None
    line = await asyncio.wait_for(process.stdout.readline(), timeout)
    if not line:
        raise RuntimeError(f"a generator exited ({await process.wait()})")
    return line


ROWS = (
    ("connections", "connections held", "{:,}"),
    ("rss_kib_per_conn", "RSS / connection (KiB)", "{:.2f}"),
    ("base_rss_mib", "base RSS / process (MiB)", "{:.0f}"),
    ("idle_cpu_percent_of_core", "idle CPU, heartbeats (% of a core)", "{:.1f}"),
    ("heartbeat_cpu_us_per_ping", "idle CPU per ping round (µs)", "{:.0f}"),
    ("fill_seconds", "connect + join all (s)", "{:.0f}"),
    ("connect_p99_ms", "connect p99 while filling (ms)", "{:.0f}"),
    ("time_to_last_delivery_ms", "broadcast: time to last delivery (ms)", "{:.0f}"),
    ("delivery_p50_ms", "broadcast: delivery p50 (ms)", "{:.0f}"),
    ("delivery_p99_ms", "broadcast: delivery p99 (ms)", "{:.0f}"),
    ("broadcast_deliveries", "broadcast deliveries", "{:,}"),
    ("broadcast_expected", "broadcast deliveries expected", "{:,}"),
    ("lost_connections", "connections lost", "{:,}"),
    ("storm_clients", "storm: clients of the killed server", "{:,}"),
    ("storm_reconnected", "storm: back on the others", "{:,}"),
    ("storm_refused", "storm: refused", "{:,}"),
    ("storm_connect_p50_ms", "storm: connect + join p50 (ms)", "{:.0f}"),
    ("storm_connect_p99_ms", "storm: connect + join p99 (ms)", "{:.0f}"),
    ("storm_all_back_seconds", "storm: kill to all back (s)", "{:.1f}"),
)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode")
    gen = sub.add_parser("generator")
    gen.add_argument("--port", type=int, required=True)
    gen.add_argument("--count", type=int, required=True)
    gen.add_argument("--source", default=HOST)
    gen.add_argument("--concurrency", type=int, default=100)
    gen.add_argument("--broadcasts", type=int, default=3)
    gen.add_argument("--timeout", type=float, default=60)
    gen.add_argument("--storm-spread", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=100_000)
    parser.add_argument("--servers", type=int, default=6)
    parser.add_argument("--concurrency", type=int, default=100, help="connects in flight, each")
    parser.add_argument("--idle-seconds", type=float, default=30.0)
    parser.add_argument("--broadcasts", type=int, default=3)
    parser.add_argument("--broadcast-gap", type=float, default=3.0)
    parser.add_argument("--timeout", type=float, default=60.0)
    parser.add_argument("--only", action="append", choices=["iofleet", "node"])
    parser.add_argument("--logs", type=Path, help="keep the servers' and Redis's logs here")
    parser.add_argument("--storm", action="store_true", help="kill a server, time the return")
    parser.add_argument("--storm-spread", type=float, default=5.0, help="seconds of arrivals")
    parser.add_argument(
        "--max-connections", type=int, help="the capacity guard (IOFLEET_MAX_CONNECTIONS)"
    )
    args = parser.parse_args()
    if args.mode == "generator":
        asyncio.run(generator(args))
        return
    if args.connections / args.servers > 19_000:
        parser.error("at most 19,000 connections per server process (20,000 open files)")
    results: dict[str, dict[str, Any]] = {}
    with tempfile.TemporaryDirectory(prefix="hundred-k-") as tmp:
        logs = args.logs or Path(tmp)
        logs.mkdir(parents=True, exist_ok=True)
        for target in args.only or ["iofleet", "node"]:
            results[target] = asyncio.run(measure(target, args, logs))
    table = Table(title=f"{args.connections:,} connections on {args.servers} processes")
    table.add_column("figure")
    for target in results:
        table.add_column(target, justify="right")
    for key, title, fmt in ROWS:
        if all(key in results[t] for t in results):
            table.add_row(title, *(fmt.format(results[t][key]) for t in results))
    console.print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "results": results}, indent=2, default=str))
    console.print(f"raw figures: {RESULTS}")


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
