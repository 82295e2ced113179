"""Server benchmark: memory per idle connection and broadcast throughput.

Runs plain python-socketio (the baseline, same chat app) and iofleet's server
in the same run, alternating, and prints medians and ratios against the
baseline. `make bench` or `python -m bench.server_bench [--runs 3]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import timeit
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
import orjson
import psutil
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.wire import WireClient
from iofleet.processes import free_port

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
ROOM = "bench"
console = Console()


@dataclass(frozen=True)
class Target:
    """A server to measure; `{port}` in its command or env is the port it is given."""

    name: str
    command: tuple[str, ...]
    env: dict[str, str] = field(default_factory=dict)


IOFLEET_ENV = {
    "IOFLEET_HOST": "127.0.0.1",
    "IOFLEET_PORT": "{port}",
    "IOFLEET_ADMIN_PORT": "0",
    "IOFLEET_AUTH": "none",
    "IOFLEET_NODE_ID": "bench",
    "IOFLEET_LOG_LEVEL": "WARNING",
    # Measure throughput, not the limits: one sender sends as fast as it can.
    "IOFLEET_RATE_LIMIT": "1000000",
    "IOFLEET_MAX_CONNECTIONS": "1000000",
}
TARGETS = (
    Target("python-socketio", (sys.executable, "-m", "bench.baseline_server", "{port}")),
    Target("iofleet", (sys.executable, "-m", "server"), IOFLEET_ENV),
    Target(
        "iofleet (asyncio loop)",
        (sys.executable, "-m", "server"),
        {**IOFLEET_ENV, "IOFLEET_UVLOOP": "false"},
    ),
)


def start(target: Target, port: int) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [part.format(port=port) for part in target.command],
        env={**os.environ, **{k: v.format(port=port) for k, v in target.env.items()}},
        cwd=REPO,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return process
        except OSError:
            time.sleep(0.05)
    process.kill()
    raise RuntimeError(f"{target.name} did not start")


async def open_clients(session: aiohttp.ClientSession, url: str, count: int) -> list[WireClient]:
    clients: list[WireClient] = []
    semaphore = asyncio.Semaphore(50)

    async def one() -> None:
        async with semaphore:
            client = WireClient(session, url)
            await client.connect()
            clients.append(client)

    await asyncio.wait_for(asyncio.gather(*(one() for _ in range(count))), 120)
    return clients


async def measure(target: Target, args: argparse.Namespace) -> dict[str, float]:
    port = free_port()
    process = start(target, port)
    url = f"http://127.0.0.1:{port}"
    try:
        server = psutil.Process(process.pid)
        connector = aiohttp.TCPConnector(limit=0)
        async with aiohttp.ClientSession(connector=connector) as session:
            warm = await open_clients(session, url, 10)
            await asyncio.sleep(0.5)
            rss_before = server.memory_info().rss
            idle = await open_clients(session, url, args.connections)
            await asyncio.sleep(1.0)
            rss_after = server.memory_info().rss
            per_connection = (rss_after - rss_before) / args.connections

            receivers = idle[: args.receivers]
            sender = warm[0]
            for client in [*receivers, sender]:
                reply = await client.emit("room:join", {"room": ROOM}, ack=True)
                assert reply[0]["ok"], reply
            for client in receivers:
                client.expect("chat:message", args.messages)
            started = time.perf_counter()
            window = 20  # acks in flight: keeps the sender honest without flooding
            for first in range(0, args.messages, window):
                batch = range(first, min(first + window, args.messages))
                await asyncio.gather(
                    *(
                        sender.emit("chat:message", {"room": ROOM, "text": f"m{i}"}, True)
                        for i in batch
                    )
                )
            await asyncio.wait_for(asyncio.gather(*(c.reached.wait() for c in receivers)), 120)
            elapsed = time.perf_counter() - started
            deliveries = len(receivers) * args.messages / elapsed
            await asyncio.gather(*(c.close() for c in [*warm, *idle]))
        return {"rss_per_connection_kib": per_connection / 1024, "deliveries_per_s": deliveries}
    finally:
        process.terminate()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def json_codec_speedup() -> float:
    """orjson vs stdlib json on a chat packet, encode + decode (a ratio, higher = faster)."""
    packet = ["chat:message", {"room": "general", "text": "hello " * 20, "from": "u1", "ts": 1}]
    text = json.dumps(packet)
    stdlib = min(
        timeit.repeat(lambda: json.loads(json.dumps(packet, separators=(",", ":"))), number=20000)
    )
    fast = min(timeit.repeat(lambda: orjson.loads(orjson.dumps(packet).decode()), number=20000))
    assert json.loads(text) == orjson.loads(text)
    return stdlib / fast


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--connections", type=int, default=1000)
    parser.add_argument("--receivers", type=int, default=200)
    parser.add_argument("--messages", type=int, default=100)
    args = parser.parse_args()

    names = [t.name for t in TARGETS]
    results: dict[str, list[dict[str, float]]] = {name: [] for name in names}
    with Progress(console=console, transient=True) as progress:
        task = progress.add_task("benchmark", total=args.runs * len(names))
        for run in range(args.runs):
            # Alternate the order so drift on a shared machine hits everyone alike.
            order = names if run % 2 == 0 else list(reversed(names))
            for name in order:
                progress.update(task, description=f"run {run + 1}/{args.runs}: {name}")
                target = next(t for t in TARGETS if t.name == name)
                results[name].append(asyncio.run(measure(target, args)))
                progress.advance(task)
    codec = json_codec_speedup()

    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    base = medians["python-socketio"]
    table = Table(
        title=f"median of {args.runs} runs; {args.connections} idle connections, "
        f"{args.receivers} receivers x {args.messages} messages"
    )
    table.add_column("server")
    table.add_column("RSS / idle connection", justify="right")
    table.add_column("vs baseline", justify="right")
    table.add_column("broadcast deliveries/s", justify="right")
    table.add_column("vs baseline", justify="right")
    for name, m in medians.items():
        table.add_row(
            name,
            f"{m['rss_per_connection_kib']:.1f} KiB",
            f"{m['rss_per_connection_kib'] / base['rss_per_connection_kib']:.2f}x",
            f"{m['deliveries_per_s']:,.0f}",
            f"{m['deliveries_per_s'] / base['deliveries_per_s']:.2f}x",
        )
    console.print(table)
    console.print(f"orjson vs stdlib json, encode+decode of a chat packet: {codec:.2f}x faster")
    RESULTS.mkdir(parents=True, exist_ok=True)
    out = RESULTS / "server_bench.json"
    out.write_text(
        json.dumps(
            {"args": vars(args), "runs": results, "medians": medians, "orjson_speedup": codec},
            indent=2,
        )
    )
    console.print(f"raw figures: {out.relative_to(REPO)}")


if __name__ == "__main__":
    main()
