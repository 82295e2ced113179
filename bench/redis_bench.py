"""Redis side of the fan-out, measured: Redis CPU per published message and what one
Redis primary (one shard) relays, for N subscribing nodes; one Redis and a 3-master
Redis Cluster with sharded pub/sub (SPUBLISH/SSUBSCRIBE), each started by the bench.

What a server node does to Redis is modelled on the wire, not through the server, so
the figure is Redis's alone:
- each subscribing "node" is one connection that (S)SUBSCRIBEs to every room channel
  (iofleet subscribes a node to the rooms it serves, `server/fanout.py`) and reads and
  discards what arrives, as fast as it comes;
- one publisher sends pipelined `PUBLISH room-channel payload` (or SPUBLISH to the
  master that owns the channel's slot), `--window` commands in flight, as the server's
  ordered publisher does; payloads of `--payload-bytes` (an iofleet chat message with
  its envelope is about 250 bytes on this channel);
- `--rooms 1` sends every message to one room; `--rooms 50` spreads them over 50 room
  channels (the audience of one message is one room; what changes is the channel table
  Redis looks up and how subscribers are spread over shards).

The primary figure is Redis's own CPU time (INFO cpu, user + system, summed over the
masters) per published message, and per delivery (a message to N subscribers is N
deliveries). That is independent of how fast this generator can publish; the ceiling
one shard relays at one core is 1 / (CPU per message), printed as `msg/s per shard at
one core`. Redis runs commands on one thread, so one shard is one core; a cluster of
K masters relays K times that when its slots (rooms) are spread evenly, which the
cluster case checks by the per-master split of CPU.

`python -m bench.redis_bench --runs 3` (medians). Results go to
`bench/results/redis_bench.json`; `iofleet/data/capacity_profile.yaml` quotes them.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shutil
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import redis
from redis.crc import key_slot
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from iofleet.processes import free_port, wait_until

HOST = "127.0.0.1"
RESULTS = Path(__file__).parent / "results" / "redis_bench.json"


def resp(*parts: bytes) -> bytes:
    """One command in RESP, the bytes redis-py would send."""
    out = [b"*%d\r\n" % len(parts)]
    for part in parts:
        out.append(b"$%d\r\n%s\r\n" % (len(part), part))
    return b"".join(out)


# --- Redis processes ---------------------------------------------------------------


@dataclass
class RedisNode:
    port: int
    process: subprocess.Popen[bytes]

    def client(self) -> redis.Redis:
        return redis.Redis(host=HOST, port=self.port, socket_timeout=10)

    def cpu_seconds(self) -> float:
        info = self.client().info("cpu")
        return float(info["used_cpu_user"]) + float(info["used_cpu_sys"])


def start_redis(workdir: Path, cluster: bool) -> RedisNode:
    port = free_port()
    argv = ["redis-server", "--bind", HOST, "--port", str(port), "--save", ""]
    argv += ["--appendonly", "no", "--dir", str(workdir), "--protected-mode", "yes"]
    # Subscribers read as fast as they can; a generous limit keeps a momentary backlog
    # from disconnecting one (the default pub/sub limit is 32 MB).
    argv += ["--client-output-buffer-limit", "pubsub 256mb 128mb 60"]
    if cluster:
        argv += ["--cluster-enabled", "yes", "--cluster-config-file", f"nodes-{port}.conf"]
    process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    node = RedisNode(port, process)
    wait_until(lambda: _answers(node), 10, "redis-server")
    return node


def _answers(node: RedisNode) -> bool:
    try:
        return bool(node.client().ping())
    except redis.RedisError:
        return False


@contextlib.contextmanager
def redis_topology(masters: int) -> Iterator[list[RedisNode]]:
    """One plain Redis (masters == 1) or a Redis Cluster of `masters` masters."""
    workdir = Path(tempfile.mkdtemp(prefix="iofleet-redis-bench-"))
    nodes: list[RedisNode] = []
    try:
        nodes = [start_redis(workdir, cluster=masters > 1) for _ in range(masters)]
        if masters > 1:
            _form_cluster(nodes)
        yield nodes
    finally:
        for node in nodes:
            node.process.terminate()
        for node in nodes:
            try:
                node.process.wait(10)
            except subprocess.TimeoutExpired:
                node.process.kill()
        shutil.rmtree(workdir, ignore_errors=True)


def _form_cluster(nodes: list[RedisNode]) -> None:
    slots_each = 16384 // len(nodes)
    for index, node in enumerate(nodes):
        first = index * slots_each
        last = 16383 if index == len(nodes) - 1 else first + slots_each - 1
        node.client().execute_command("CLUSTER ADDSLOTSRANGE", first, last)  # type: ignore[no-untyped-call]
    for node in nodes[1:]:
        node.client().execute_command("CLUSTER MEET", HOST, nodes[0].port)  # type: ignore[no-untyped-call]

    def settled() -> bool:
        return all(n.client().cluster("info").get("cluster_state") == "ok" for n in nodes)

    wait_until(settled, 20, "cluster state ok")


def owner_of(nodes: list[RedisNode], channel: str) -> RedisNode:
    slot = key_slot(channel.encode())
    return nodes[min(slot // (16384 // len(nodes)), len(nodes) - 1)]


# --- the wire: subscribers and the publisher ----------------------------------------


class Drain(asyncio.Protocol):
    """A subscribing node: reads and discards, counting bytes; `subscribed` resolves once
    Redis has confirmed every channel asked for."""

    def __init__(self, channels: list[str]) -> None:
        self.received = 0
        self.subscribed = asyncio.get_running_loop().create_future()
        self._pending = {c.encode() for c in channels}
        self._head = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        self.received += len(data)
        if self.subscribed.done():
            return
        self._head += data
        self._pending = {c for c in self._pending if b"\r\n" + c + b"\r\n" not in self._head}
        if not self._pending:
            self.subscribed.set_result(None)
            self._head = b""


class Publisher(asyncio.Protocol):
    """Pipelined commands with a window in flight; counts integer replies (receivers)."""

    def __init__(self, window: int) -> None:
        self.window = window
        self.in_flight = 0
        self.receivers = 0
        self.replies = 0
        self.room = asyncio.Event()
        self.room.set()
        self._tail = b""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport: asyncio.Transport = transport  # type: ignore[assignment]

    def data_received(self, data: bytes) -> None:
        buffer = self._tail + data
        lines = buffer.split(b"\r\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b":"):
                self.receivers += int(line[1:])
                self.replies += 1
                self.in_flight -= 1
        if self.in_flight < self.window:
            self.room.set()

    async def send(self, command: bytes) -> None:
        while self.in_flight >= self.window:
            self.room.clear()
            await self.room.wait()
        self.in_flight += 1
        self.transport.write(command)


async def send_all(
    publishers: Mapping[int, Publisher],
    commands: Sequence[tuple[RedisNode, bytes]],
    messages: int,
    seconds: float,
) -> tuple[int, float]:
    """Send `commands` in turn, each to its node's publisher, until `messages` are sent
    or `seconds` have passed, and wait for every reply: (commands sent, seconds taken)."""
    started = time.perf_counter()
    deadline = started + seconds
    sent = 0
    while sent < messages and time.perf_counter() < deadline:
        node, command = commands[sent % len(commands)]
        await publishers[node.port].send(command)
        sent += 1
    while sum(p.replies for p in publishers.values()) < sent:
        if time.perf_counter() > deadline + 10:
            raise RuntimeError("Redis did not answer every command within 10 s")
        await asyncio.sleep(0.01)
    return sent, time.perf_counter() - started


async def one_case(
    nodes: list[RedisNode], subscribers: int, rooms: int, args: argparse.Namespace
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sharded = len(nodes) > 1
    channels = [f"iofleet#/#room-{i}" for i in range(rooms)]
    subscribe_word = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
    drains: list[Drain] = []
    for _ in range(subscribers):
        for node in nodes:
            mine = [c for c in channels if not sharded or owner_of(nodes, c) is node]
            if not mine:
                continue
            _, drain = await loop.create_connection(partial(Drain, mine), HOST, node.port)
            # SSUBSCRIBE takes channels of one slot only: one command per channel.
            drain.transport.write(b"".join(resp(subscribe_word, c.encode()) for c in mine))
            drains.append(drain)
    await asyncio.wait_for(asyncio.gather(*(d.subscribed for d in drains)), 10)
    publishers: dict[int, Publisher] = {}
    for node in nodes:
        _, publisher = await loop.create_connection(lambda: Publisher(args.window), HOST, node.port)
        publishers[node.port] = publisher
    payload = b"x" * args.payload_bytes
    publish_word = b"SPUBLISH" if sharded else b"PUBLISH"
    commands = [
        (owner_of(nodes, c) if sharded else nodes[0], resp(publish_word, c.encode(), payload))
        for c in channels
    ]
    cpu_before = [n.cpu_seconds() for n in nodes]
    sent, elapsed = await send_all(publishers, commands, args.messages, args.seconds)
    cpu = [n.cpu_seconds() - before for n, before in zip(nodes, cpu_before, strict=True)]
    receivers = sum(p.receivers for p in publishers.values())
    for drain in drains:
        drain.transport.close()
    for publisher in publishers.values():
        publisher.transport.close()
    if receivers != sent * subscribers:
        raise RuntimeError(f"{receivers} deliveries counted, {sent * subscribers} expected")
    total_cpu = sum(cpu)
    per_message_us = total_cpu / sent * 1e6
    return {
        "messages": sent,
        "redis_cpu_us_per_message": per_message_us,
        "redis_cpu_us_per_delivery": per_message_us / subscribers,
        "messages_per_second_per_shard_at_one_core": 1e6 / per_message_us,
        "published_per_second_here": sent / elapsed,
        "busiest_master_share": max(cpu) / total_cpu if total_cpu else 1.0,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--subscribers", default="1,4,16,64", help="subscribing nodes")
    parser.add_argument("--rooms", default="1,50", help="room channels messages spread over")
    parser.add_argument("--masters", default="1,3", help="1: one Redis; 3: a Redis Cluster")
    parser.add_argument("--messages", type=int, default=100_000, help="per case, at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="per case, at most")
    parser.add_argument("--window", type=int, default=256)
    parser.add_argument("--payload-bytes", type=int, default=250)
    args = parser.parse_args()
    cases = [
        (m, s, r)
        for m in map(int, args.masters.split(","))
        for s in map(int, args.subscribers.split(","))
        for r in map(int, args.rooms.split(","))
    ]
    results: dict[str, list[dict[str, float]]] = {}
    with Progress() as progress:
        task = progress.add_task("Redis cases", total=len(cases) * args.runs)
        for _ in range(args.runs):
            for masters in sorted({m for m, _, _ in cases}):
                with redis_topology(masters) as nodes:
                    for m, subscribers, rooms in cases:
                        if m != masters:
                            continue
                        key = f"{masters}:{subscribers}:{rooms}"
                        figures = asyncio.run(one_case(nodes, subscribers, rooms, args))
                        results.setdefault(key, []).append(figures)
                        progress.advance(task)
    report(results, args)


def report(results: dict[str, list[dict[str, float]]], args: argparse.Namespace) -> None:
    table = Table(title=f"Redis per published message, medians of {args.runs} runs")
    for column in ("topology", "subscribing nodes", "rooms", "CPU µs/msg", "CPU µs/delivery",
                   "msg/s per shard (1 core)", "busiest master", "published/s here"):  # fmt: skip
        table.add_column(column, justify="right")
    summary: dict[str, dict[str, float]] = {}
    for key, runs in results.items():
        masters, subscribers, rooms = key.split(":")
        median = {name: statistics.median(r[name] for r in runs) for name in runs[0]}
        summary[key] = median
        table.add_row(
            "one Redis" if masters == "1" else f"cluster x{masters}",
            subscribers,
            rooms,
            f"{median['redis_cpu_us_per_message']:.2f}",
            f"{median['redis_cpu_us_per_delivery']:.2f}",
            f"{median['messages_per_second_per_shard_at_one_core']:,.0f}",
            f"{median['busiest_master_share']:.0%}",
            f"{median['published_per_second_here']:,.0f}",
        )
    Console().print(table)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "medians": summary, "runs": results}))
    print(f"raw figures: {RESULTS}")


if __name__ == "__main__":
    main()
