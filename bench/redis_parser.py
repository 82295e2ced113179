"""What redis-py's reply parser costs a subscriber: its pure-Python RESP parser
against hiredis (its C parser, which redis-py uses when hiredis is installed).

A server's fan-out listener and the relay parse every pub/sub message they hear,
so this is a per-message cost on the cross-node and cross-region paths. In one
process, one client publishes `--messages` fan-out-sized messages (pipelined, 1,000
a batch) on a channel that another client of the same process is subscribed to;
the figure is the process's CPU time (user + system) per message, publish and
receipt together, with each parser in turn, alternating, `--runs` times (medians).
Redis is started by the bench on a free loopback port.

`.venv/bin/python -m bench.redis_parser --runs 3`
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import statistics
import subprocess
import tempfile
from pathlib import Path

from redis import asyncio as aioredis
from redis._parsers import _AsyncHiredisParser, _AsyncRESP2Parser
from redis.utils import HIREDIS_AVAILABLE

from iofleet.processes import free_port, redis_answers, stop_pid, wait_until

HOST = "127.0.0.1"
BATCH = 1000
# A room emit as the fan-out publishes it (python-socketio's envelope, 200 bytes of
# text, the relay's origin marker): about 330 bytes, the size bench.cross_region sends.
MESSAGE = (
    b'{"method":"emit","event":"chat:message","data":{"room":"support-42","text":"'
    + b"x" * 200
    + b'"},"namespace":"/","room":"support-42","skip_sid":null,"callback":null,'
    b'"host_id":"0123456789abcdef0123456789abcdef","iofleet_origin":"r1"}'
)
PARSERS = {"pure Python (RESP2)": _AsyncRESP2Parser, "hiredis": _AsyncHiredisParser}


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def cpu_per_message(port: int, parser: type, messages: int) -> float:
    """µs of this process's CPU per message published and heard, with `parser`."""
    pool = aioredis.ConnectionPool(host=HOST, port=port, parser_class=parser)
    subscriber = aioredis.Redis(connection_pool=pool)
    publisher = aioredis.Redis(connection_pool=pool)
    pubsub = subscriber.pubsub()
    await pubsub.subscribe("bench")
    heard = 0

    async def hear() -> None:
        nonlocal heard
        async for message in pubsub.listen():
            if message["type"] == "message":
                heard += 1
                if heard == messages:
                    return

    listener = asyncio.get_running_loop().create_task(hear())
    await asyncio.sleep(0.2)  # the subscription is in place
    started = cpu_seconds()
    for _ in range(messages // BATCH):
        pipe = publisher.pipeline(transaction=False)
        for _ in range(BATCH):
            pipe.publish("bench", MESSAGE)
        await pipe.execute()
    await asyncio.wait_for(listener, 120)
    used = cpu_seconds() - started
    await pubsub.aclose()
    await subscriber.aclose()
    await publisher.aclose()
    await pool.aclose()
    return used / messages * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--messages", type=int, default=100_000)
    args = parser.parse_args()
    if not HIREDIS_AVAILABLE:
        parser.error("hiredis is not installed (make setup installs it from the lock)")
    args.messages = max(BATCH, args.messages // BATCH * BATCH)
    port = free_port()
    with tempfile.TemporaryDirectory(prefix="redis-parser-") as tmp:
        log = Path(tmp) / "redis.log"
        argv = ["redis-server", "--port", str(port), "--bind", HOST, "--save", ""]
        with log.open("w") as out:
            redis = subprocess.Popen([*argv, "--appendonly", "no"], stdout=out, stderr=out)
        try:
            wait_until(lambda: redis_answers(port), 10, "redis-server")
            figures: dict[str, list[float]] = {name: [] for name in PARSERS}
            for run in range(args.runs):
                for name, parser_class in PARSERS.items():
                    figure = asyncio.run(cpu_per_message(port, parser_class, args.messages))
                    figures[name].append(figure)
                    print(f"run {run + 1}/{args.runs} {name}: {figure:.1f} µs per message")
        finally:
            stop_pid(redis.pid)
    medians = {name: statistics.median(values) for name, values in figures.items()}
    pure, fast = medians["pure Python (RESP2)"], medians["hiredis"]
    print(
        f"median of {args.runs}, {args.messages} messages of {len(MESSAGE)} bytes: "
        f"pure Python {pure:.1f} µs, hiredis {fast:.1f} µs per message "
        f"({fast / pure:.2f}x)"
    )


if __name__ == "__main__":
    main()
