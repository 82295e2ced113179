"""Rooms across two regions (docs/regions.md): what the relay adds, measured.

    .venv/bin/python -m bench.cross_region [--rate 5000] [--seconds 5] [--rounds 3]

Two regions on loopback, as `iofleet up --regions 2` joins them: a redis-server,
one `python -m server` and a relay each, and a delay proxy of `--delay-ms` (70)
one way on each link. The load is bare Socket.IO connections (`bench.raw_ws`):
one sender in r1, `--subscribers` in r2, messages at `--rate` deliveries/s for
`--seconds` (bounded in count and time). Per round:

- cross-region latency p50/p99 minus the injected delay (the relay's overhead
  with two Redis hops and the servers' own path), raw;
- the delay proxy's own cost, measured in the same seconds: a Redis `PING` every
  10 ms to r2's Redis through the proxy (r1's relay's path) and straight to it;
  the proxy's one-way cost is `(RTT through it - 2 x delay - RTT straight) / 2`
  (at p50 and p99), which production's path does not have, and the relay's
  overhead net of it is the raw figure minus that (quantiles subtracted: an
  estimate, not a per-message difference);
- bytes per message on the link: payload bytes the relay counted, and every
  byte through the delay proxy r1 -> r2 (RESP framing, the recovery script's
  arguments, pings) per message;
- time from link restore to the first delivery of a held message;
- latency of r1's own users (sender and subscribers on r1's node) with the link
  up and with it cut: a region down the line must add nothing.

Medians over the rounds are printed, with the 1-minute load average during each
round (the machine is shared: a figure means little without it), and written to
bench/results/cross_region.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from bench.fanout_bench import (
    BROADCAST_EVENT,
    HOST,
    IOFLEET_ENV,
    RESULTS,
    emit_at_rate,
    joined,
    open_many,
    running,
)
from bench.raw_ws import LatencyTally, RawSocket, Tally
from iofleet.processes import free_port
from iofleet.regions import links_between, relays_for

REGIONS = ("r1", "r2")


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).close()


def quantiles(latencies: list[float]) -> tuple[float, float]:
    got = sorted(latencies)
    return got[len(got) // 2], got[min(len(got) - 1, int(len(got) * 0.99))]


async def send_at_rate(
    sender: RawSocket, tally: LatencyTally, receivers: int, rate: float, seconds: float
) -> int:
    """Messages to ROOM at `rate` deliveries/s over `seconds`; waits (30 s at most) for
    every delivery; returns the number of messages."""
    interval = receivers / rate
    count = max(1, int(seconds / interval))
    tally.expect(count * receivers)
    await emit_at_rate(sender, interval, count)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(tally.reached.wait(), 30)
    if tally.count < tally.target:
        raise RuntimeError(f"{tally.count} of {tally.target} delivered")
    return count


async def ping_rtts_ms(port: int, seconds: float, every: float = 0.01) -> list[float]:
    """Round trips of `PING` to the Redis (or proxy) on `port`, one per `every` s
    for `seconds` (bounded in count)."""
    reader, writer = await asyncio.open_connection(HOST, port)
    rtts = []
    try:
        for _ in range(max(1, int(seconds / every))):
            start = time.perf_counter()
            writer.write(b"PING\r\n")
            await reader.readuntil(b"\r\n")
            rtts.append((time.perf_counter() - start) * 1000)
            await asyncio.sleep(every)
    finally:
        writer.close()
    return rtts


@contextlib.contextmanager
def two_regions(workdir: Path, delay_ms: float) -> Iterator[dict[str, Any]]:
    with contextlib.ExitStack() as stack:
        redis_ports = {name: free_port() for name in REGIONS}
        for name, port in redis_ports.items():
            argv = ["redis-server", "--bind", HOST, "--port", str(port), "--save", ""]
            stack.enter_context(
                running(argv, {}, workdir / f"redis-{name}.log", set(), "redis", port)
            )
        server_ports = {}
        for name in REGIONS:
            port = server_ports[name] = free_port()
            env = {
                k: v.format(port=port, redis=f"redis://{HOST}:{redis_ports[name]}/0")
                for k, v in IOFLEET_ENV.items()
            }
            env = {**env, "IOFLEET_NODE_ID": f"{name}-a", "IOFLEET_RECOVERY": "true"}
            argv = [sys.executable, "-m", "server"]
            stack.enter_context(
                running(argv, env, workdir / f"server-{name}.log", set(), "tcp", port)
            )
        links = links_between(redis_ports, delay_ms)
        for link in links:
            link.start(workdir)
            stack.callback(link.stop)
        relays = relays_for(redis_ports, links)
        for relay in relays:
            relay.start(workdir, {"PATH": "/usr/bin:/bin"})
            stack.callback(relay.stop)
        yield {"servers": server_ports, "links": links, "relays": relays}


async def wait_far_rooms(admin_url: str, rooms: int, within: float = 10) -> None:
    deadline = time.monotonic() + within
    while get_json(f"{admin_url}/admin/status")["links"][0]["far_rooms"] != rooms:
        if time.monotonic() > deadline:
            raise RuntimeError("the relay did not learn the far region's room")
        await asyncio.sleep(0.05)


async def one_round(world: dict[str, Any], args: argparse.Namespace) -> dict[str, float]:
    r1_port, r2_port = world["servers"]["r1"], world["servers"]["r2"]
    link = next(x for x in world["links"] if x.source == "r1")
    back = next(x for x in world["links"] if x.source == "r2")
    r1_relay = world["relays"][0].admin_url
    far = LatencyTally(BROADCAST_EVENT)
    near = LatencyTally(BROADCAST_EVENT)
    far_subs = await open_many(r2_port, far, args.subscribers, 50)
    near_subs = await open_many(r1_port, near, args.subscribers, 50)
    sender = (await open_many(r1_port, Tally(b"-"), 1, 1))[0]
    await joined([*far_subs, *near_subs, sender])
    await wait_far_rooms(r1_relay, 1)
    result: dict[str, float] = {}

    # Cross-region latency at the rate, and bytes per message on the link; the
    # proxy's own cost under the same load, through it and straight to r2's Redis.
    bytes_before = get_json(f"{link.control_url}/stats")["bytes_up"]
    via_proxy = asyncio.ensure_future(ping_rtts_ms(link.port, args.seconds))
    straight = asyncio.ensure_future(ping_rtts_ms(link.target_port, args.seconds))
    sent = await send_at_rate(sender, far, args.subscribers, args.rate, args.seconds)
    result["load_1m"] = os.getloadavg()[0]
    p50, p99 = quantiles(far.latencies_ms)
    result["cross_p50_minus_delay_ms"] = p50 - args.delay_ms
    result["cross_p99_minus_delay_ms"] = p99 - args.delay_ms
    straight_p50, _ = quantiles(await straight)
    for name, rtt in zip(("p50", "p99"), quantiles(await via_proxy), strict=True):
        proxy_ms = (rtt - 2 * args.delay_ms - straight_p50) / 2
        result[f"proxy_one_way_{name}_ms"] = proxy_ms
        result[f"relay_{name}_net_of_proxy_ms"] = result[f"cross_{name}_minus_delay_ms"] - proxy_ms
    wire = get_json(f"{link.control_url}/stats")["bytes_up"] - bytes_before
    result["link_bytes_per_message"] = wire / sent
    near_p50, near_p99 = quantiles(near.latencies_ms)
    result["local_p50_link_up_ms"], result["local_p99_link_up_ms"] = near_p50, near_p99

    # The link cut: r1's own users, at the same rate for r1's subscribers.
    for proxy in (link, back):
        post(f"{proxy.control_url}/cut")
    near.latencies_ms.clear()
    await send_at_rate(sender, near, args.subscribers, args.rate, args.seconds / 2)
    result["local_p50_link_down_ms"], result["local_p99_link_down_ms"] = quantiles(
        near.latencies_ms
    )

    # Held messages; time from restore to the first delivery in r2.
    await asyncio.sleep(1.0)
    far.expect(args.subscribers * 1000)  # everything held, and the cut-time ones
    first = far.count
    restored = time.perf_counter()
    for proxy in (link, back):
        post(f"{proxy.control_url}/restore")
    while far.count == first:
        if time.perf_counter() - restored > 30:
            raise RuntimeError("nothing arrived after the restore")
        await asyncio.sleep(0.001)
    result["restore_to_first_delivery_ms"] = (time.perf_counter() - restored) * 1000
    for sock in [*far_subs, *near_subs, sender]:
        sock.close()
    await asyncio.sleep(0.5)
    return result


async def run(args: argparse.Namespace) -> dict[str, float]:
    rounds: list[dict[str, float]] = []
    workdir = Path(tempfile.mkdtemp(prefix="iofleet-cross-region-"))
    with two_regions(workdir, args.delay_ms) as world:
        await asyncio.sleep(1.0)  # links up
        for _ in range(args.rounds):
            rounds.append(await one_round(world, args))
    return {key: statistics.median(r[key] for r in rounds) for key in rounds[0]}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.cross_region", description=__doc__)
    parser.add_argument("--rate", type=float, default=5000, help="deliveries/s in r2")
    parser.add_argument("--subscribers", type=int, default=10, help="in each region's room")
    parser.add_argument("--seconds", type=float, default=5, help="per measurement")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--delay-ms", type=float, default=70.0, help="one way, per link")
    args = parser.parse_args()
    medians = asyncio.run(run(args))
    for key, value in medians.items():
        print(f"{key:32} {value:10.1f}")
    RESULTS.mkdir(exist_ok=True)
    out = RESULTS / "cross_region.json"
    out.write_text(json.dumps({"args": vars(args), "medians": medians}, indent=2))
    print(f"written to {out}")


if __name__ == "__main__":
    main()
