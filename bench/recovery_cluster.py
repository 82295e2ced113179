"""The ceiling of connection state recovery on Redis: recoverable emits/s on one Redis and
on a 3-master Redis Cluster, each started by the bench (`bench.redis_bench`'s starter).

Every recoverable emit is one script on Redis (`server/sio/cluster/recovery.py`): XADD
to the stream, XTRIM by age, (S)PUBLISH on the room's channel. This bench sends the
server's own script with the server's own key layout (`KeyLayout`), on the wire as
the server's ordered publisher does (pipelined, `--window` in flight), with
`--subscribers` subscribing nodes reading every room channel:

- one Redis: EVALSHA of `EMIT_SCRIPT`, one stream for everything;
- a cluster, `--namespaces 1`: EVAL of `SHARDED_EMIT_SCRIPT` (what the server sends on a
  cluster), every emit in the namespace's slot: one master does all the work;
- a cluster, `--namespaces 3`: three namespaces whose tags land on three different
  masters, emits spread evenly over them.

Figures: Redis CPU time per emit (INFO cpu, user + system, summed over the masters),
the emits/s one shard sustains at one core (1 / CPU per emit), the share of the CPU on
the busiest master, and the emits/s this generator reached. The generator is one
Python process and this machine has 2 cores shared with the masters, so "emits/s
here" is the generator's figure, not Redis's; the CPU per emit and the busiest
master's share are what carry over: a namespace is one slot, so one shard, and its
ceiling is one shard's.

    python -m bench.recovery_cluster [--runs 3] [--messages 50000] [--seconds 10]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import statistics
from functools import partial

from rich.console import Console
from rich.table import Table

from bench.fanout_bench import REPO
from bench.redis_bench import (
    HOST,
    Drain,
    Publisher,
    RedisNode,
    owner_of,
    redis_topology,
    resp,
    send_all,
)
from server.sio.cluster.recovery import EMIT_SCRIPT, SHARDED_EMIT_SCRIPT, KeyLayout

CHANNEL = "iofleet"
ROOMS = 10  # per namespace
MAX_MESSAGES = 100_000  # IOFLEET_RECOVERY_MAX_MESSAGES's default
WINDOW_MS = 120_000  # IOFLEET_RECOVERY_WINDOW_SECONDS's default
PLAIN = "one Redis, PUBLISH (recovery off)"
CASES = (
    ("one Redis", 1, 1),
    ("cluster x3, 1 namespace", 3, 1),
    ("cluster x3, 3 namespaces", 3, 3),
    # The same emits as a plain PUBLISH, as a server with recovery off sends them: the
    # difference to "one Redis" is what recovery adds to Redis's CPU per message.
    (PLAIN, 1, 1),
)
RESULTS = REPO / "bench" / "results" / "recovery_cluster.json"


class ScriptPublisher(Publisher):
    """`Publisher` for scripts: their replies are bulk strings (the stream ids)."""

    def data_received(self, data: bytes) -> None:
        buffer = self._tail + data
        lines = buffer.split(b"\r\n")
        self._tail = lines.pop()
        for line in lines:
            if line.startswith(b"-"):
                raise RuntimeError(f"Redis refused the script: {line.decode()}")
            if line.startswith(b"$"):
                self.replies += 1
                self.in_flight -= 1
        if self.in_flight < self.window:
            self.room.set()


def namespaces_on_distinct_masters(nodes: list[RedisNode], count: int) -> list[str]:
    """`count` namespaces whose stream (and channels) live on `count` different masters."""
    keys = KeyLayout(CHANNEL, sharded=True)
    chosen: dict[int, str] = {}
    for index in range(1000):
        namespace = "/" if index == 0 else f"/ns{index}"
        chosen.setdefault(owner_of(nodes, keys.stream(namespace)).port, namespace)
        if len(chosen) == count:
            return list(chosen.values())
    raise RuntimeError(f"no {count} namespaces on distinct masters")


def emit_message(namespace: str, room: str) -> bytes:
    """An emit as the server streams it (a chat message, about 250 bytes)."""
    message = {
        "method": "emit",
        "event": "chat:message",
        "data": [{"room": room, "text": "x" * 120, "from": "user-1", "ts": 1.7e12}],
        "binary": False,
        "namespace": namespace,
        "room": room,
        "skip_sid": None,
        "callback": None,
        "host_id": "",
    }
    return json.dumps(message, separators=(",", ":")).encode()


def commands(
    nodes: list[RedisNode], namespaces: list[str], plain: bool = False
) -> tuple[list[tuple[RedisNode, bytes]], dict[int, list[str]]]:
    """Each room's emit command and the master it goes to; the channels by master.
    `plain`: a PUBLISH of the same message (recovery off), on one Redis."""
    sharded = len(nodes) > 1
    keys = KeyLayout(CHANNEL, sharded=sharded)
    limits = (str(MAX_MESSAGES).encode(), str(WINDOW_MS).encode())
    out: list[tuple[RedisNode, bytes]] = []
    channels: dict[int, list[str]] = {}
    for namespace in namespaces:
        stream = keys.stream(namespace)
        for index in range(ROOMS):
            room = f"room-{index}"
            channel = keys.room_channel(namespace, room)
            node = owner_of(nodes, stream) if sharded else nodes[0]
            body = emit_message(namespace, room)
            if plain:
                command = resp(b"PUBLISH", channel.encode(), body)
            elif sharded:  # the server's cluster path: EVAL, the channel a declared key
                script = (b"EVAL", SHARDED_EMIT_SCRIPT.encode(), b"2", stream.encode())
                command = resp(*script, channel.encode(), channel.encode(), body, *limits)
            else:
                sha = hashlib.sha1(EMIT_SCRIPT.encode()).hexdigest().encode()
                command = resp(
                    b"EVALSHA", sha, b"1", stream.encode(), channel.encode(), body, *limits
                )
            out.append((node, command))
            channels.setdefault(node.port, []).append(channel)
    return out, channels


async def one_case(
    nodes: list[RedisNode], namespaces: list[str], args: argparse.Namespace, plain: bool = False
) -> dict[str, float]:
    loop = asyncio.get_running_loop()
    sharded = len(nodes) > 1
    if not sharded:
        nodes[0].client().script_load(EMIT_SCRIPT)
    emits, channels = commands(nodes, namespaces, plain)
    subscribe_word = b"SSUBSCRIBE" if sharded else b"SUBSCRIBE"
    drains: list[Drain] = []
    for _ in range(args.subscribers):
        for port, mine in channels.items():
            _, drain = await loop.create_connection(partial(Drain, mine), HOST, port)
            drain.transport.write(b"".join(resp(subscribe_word, c.encode()) for c in mine))
            drains.append(drain)
    await asyncio.wait_for(asyncio.gather(*(d.subscribed for d in drains)), 10)
    publishers: dict[int, Publisher] = {}
    kind = Publisher if plain else ScriptPublisher
    for node in nodes:
        _, publisher = await loop.create_connection(lambda: kind(args.window), HOST, node.port)
        publishers[node.port] = publisher
    cpu_before = [n.cpu_seconds() for n in nodes]
    sent, elapsed = await send_all(publishers, emits, args.messages, args.seconds)
    cpu = [n.cpu_seconds() - before for n, before in zip(nodes, cpu_before, strict=True)]
    for drain in drains:
        drain.transport.close()
    for publisher in publishers.values():
        publisher.transport.close()
    per_emit_us = sum(cpu) / sent * 1e6
    return {
        "emits": sent,
        "redis_cpu_us_per_emit": per_emit_us,
        "emits_per_second_per_shard_at_one_core": 1e6 / per_emit_us,
        "busiest_master_share": max(cpu) / sum(cpu),
        "emits_per_second_here": sent / elapsed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=50_000, help="per case, at most")
    parser.add_argument("--seconds", type=float, default=10.0, help="per case, at most")
    parser.add_argument("--subscribers", type=int, default=4, help="subscribing nodes")
    parser.add_argument("--window", type=int, default=256, help="emits in flight")
    args = parser.parse_args()
    results: dict[str, list[dict[str, float]]] = {name: [] for name, _, _ in CASES}
    for _ in range(args.runs):
        for name, masters, spread in CASES:
            with redis_topology(masters) as nodes:  # a fresh one: streams start empty
                namespaces = (
                    ["/"] if masters == 1 else namespaces_on_distinct_masters(nodes, spread)
                )
                results[name].append(
                    asyncio.run(one_case(nodes, namespaces, args, plain=name == PLAIN))
                )
    table = Table(title=f"Recoverable emits on Redis, medians of {args.runs} runs")
    columns = ("topology", "CPU µs/emit", "emits/s per shard (1 core)", "busiest master")
    for column in (*columns, "ceiling (shards used x per shard)", "emits/s here"):
        table.add_column(column, justify="right")
    for name, masters, spread in CASES:
        runs = results[name]
        median = {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        per_shard = median["emits_per_second_per_shard_at_one_core"]
        table.add_row(
            name,
            f"{median['redis_cpu_us_per_emit']:.2f}",
            f"{per_shard:,.0f}",
            f"{median['busiest_master_share']:.0%}",
            f"{per_shard * min(masters, spread):,.0f}",
            f"{median['emits_per_second_here']:,.0f}",
        )
    Console(width=150).print(table)
    print(f"({args.subscribers} subscribing nodes, {ROOMS} rooms per namespace, 2-core machine)")
    medians = {
        name: {key: statistics.median(r[key] for r in runs) for key in runs[0]}
        for name, runs in results.items()
    }
    extra = medians["one Redis"]["redis_cpu_us_per_emit"] - medians[PLAIN]["redis_cpu_us_per_emit"]
    print(f"recovery adds {extra:.2f} µs of Redis CPU per message on one Redis")
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"args": vars(args), "medians": medians}, indent=2))


if __name__ == "__main__":
    main()
