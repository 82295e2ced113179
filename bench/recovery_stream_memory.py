"""Redis memory of the recovery stream: what 1k messages/s over the window costs.

A real redis-server and a real server (`python -m server`, IOFLEET_RECOVERY=true);
a python-socketio client in one room sends `--messages` chat messages of `--text`
bytes each (default 120,000: 1k messages/s for the default 120 s window, the stream
allowed to hold them all); every one is appended to `<channel>#stream` by the server's
own emit script. Then `MEMORY USAGE <stream> SAMPLES 0` (every entry counted) and
the growth of `used_memory` (INFO memory) give the bytes per stream entry, for each
text size. The planner (`iofleet.plan.recovery_stream`) uses the per-entry figure:
fixed bytes + a slope times the text's bytes, from two text sizes.

It also prints the Redis command time of the emit script (`INFO commandstats`,
EVALSHA) beside a plain PUBLISH in the same run (recovery off): command time only,
without the I/O the capacity profile's per-message CPU includes, so it shows what
recovery adds to Redis's work but is not fed to the planner.

    python -m bench.recovery_stream_memory [--messages 120000] [--text 64 512]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
from pathlib import Path

import redis
import socketio

from iofleet.local_servers import ServerSpec, start_redis, start_server

CHANNEL = "iofleet"
STREAM = f"{CHANNEL}#stream"
ROOM = "r"


def server_env(messages: int, recovery: bool = True) -> dict[str, str]:
    return {
        **os.environ,
        "IOFLEET_AUTH": "none",
        "IOFLEET_JWT_SECRET": "stream-memory-bench-only-0123456789abcdef",
        "IOFLEET_RECOVERY": "true" if recovery else "false",
        # Hold every message the run sends: the figure is per entry kept.
        "IOFLEET_RECOVERY_MAX_MESSAGES": str(messages * 2),
        "IOFLEET_RATE_LIMIT": "1000000",
        "IOFLEET_REDIS_CHANNEL": CHANNEL,
    }


async def send(url: str, messages: int, text: str) -> None:
    client = socketio.AsyncClient()
    await client.connect(url, transports=["websocket"])
    try:
        await client.call("room:join", {"room": ROOM}, timeout=10)
        for index in range(messages):
            await client.emit("chat:message", {"room": ROOM, "text": text})
            if index % 500 == 499:  # an ack now and then keeps the client's buffer bounded
                await client.call("room:join", {"room": ROOM}, timeout=30)
    finally:
        await client.disconnect()


def measure(work: Path, messages: int, text_bytes: int) -> dict[str, float]:
    redis_server = start_redis(work / f"redis-{text_bytes}.log")
    spec = ServerSpec.on_free_ports("memory", redis_server.url)
    server = start_server(spec, server_env(messages), work)
    try:
        server.wait_ready(30)
        db = redis.Redis(port=redis_server.port)
        before = int(db.info("memory")["used_memory"])
        started = time.monotonic()
        asyncio.run(send(f"http://{spec.host}:{spec.port}", messages, "x" * text_bytes))
        deadline = time.monotonic() + 60
        while int(db.xlen(STREAM)) < messages and time.monotonic() < deadline:
            time.sleep(0.1)
        took = time.monotonic() - started
        entries = int(db.xlen(STREAM))
        usage = int(db.memory_usage(STREAM, samples=0) or 0)
        grown = int(db.info("memory")["used_memory"]) - before
        # Redis CPU of the emit script (XADD + XTRIM + PUBLISH, one EVALSHA per emit).
        script = db.info("commandstats").get("cmdstat_evalsha", {})
        db.close()
        return {
            "text_bytes": text_bytes,
            "entries": entries,
            "stream_bytes": usage,
            "bytes_per_entry": usage / entries,
            "used_memory_growth_per_entry": grown / entries,
            "send_rate": messages / took,
            "script_us_per_call": float(script.get("usec_per_call", 0.0)),
        }
    finally:
        server.stop()
        redis_server.stop()


def publish_cpu_us(work: Path, messages: int, text_bytes: int) -> float:
    """The baseline in the same run: Redis CPU of a plain PUBLISH per emit (recovery off)."""
    redis_server = start_redis(work / "redis-off.log")
    spec = ServerSpec.on_free_ports("memory-off", redis_server.url)
    server = start_server(spec, server_env(messages, recovery=False), work)
    try:
        server.wait_ready(30)
        asyncio.run(send(f"http://{spec.host}:{spec.port}", messages, "x" * text_bytes))
        db = redis.Redis(port=redis_server.port)
        deadline = time.monotonic() + 30
        stats: dict[str, float] = {}
        while time.monotonic() < deadline:
            stats = db.info("commandstats").get("cmdstat_publish", {})
            if int(stats.get("calls", 0)) >= messages:
                break
            time.sleep(0.1)
        db.close()
        return float(stats.get("usec_per_call", 0.0))
    finally:
        server.stop()
        redis_server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--messages", type=int, default=120_000)
    parser.add_argument("--text", type=int, nargs="+", default=[64, 512])
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="iofleet-stream-") as work:
        rows = [measure(Path(work), args.messages, size) for size in args.text]
        publish_us = publish_cpu_us(Path(work), args.messages, args.text[0])
    for row in rows:
        per_1k = row["bytes_per_entry"] * 1000 * 120 / 2**20
        print(
            f"text {row['text_bytes']:.0f} B: {row['entries']:.0f} entries, stream "
            f"{row['stream_bytes'] / 2**20:.1f} MiB = {row['bytes_per_entry']:.0f} B/entry "
            f"(used_memory +{row['used_memory_growth_per_entry']:.0f} B/entry; sent at "
            f"{row['send_rate']:.0f} msg/s) -> 1k msg/s over 120 s: {per_1k:.1f} MiB;"
            f" emit script {row['script_us_per_call']:.2f} us of Redis CPU per call"
        )
    if len(rows) >= 2:
        low, high = rows[0], rows[-1]
        slope = (high["bytes_per_entry"] - low["bytes_per_entry"]) / (
            high["text_bytes"] - low["text_bytes"]
        )
        fixed = low["bytes_per_entry"] - slope * low["text_bytes"]
        print(f"per entry: {fixed:.0f} B + {slope:.2f} x text bytes")
    script_us = rows[0]["script_us_per_call"]
    print(
        f"Redis CPU per emit: script {script_us:.2f} us with recovery, PUBLISH "
        f"{publish_us:.2f} us without ({args.text[0]} B text, one subscribing node):"
        f" recovery adds {script_us - publish_us:.2f} us"
    )


if __name__ == "__main__":
    main()
