"""Local autoscaler benchmark: reaction time and drain duration on a real local fleet.

`iofleet up --servers 2 --min 2 --max 3 --target-connections 20` (HAProxy, the local
autoscaler), then per run:
- load step: 60 WebSocket connections at once (30 per server, 1.5x the target);
  reaction = from the first of them (opening all takes about a second) until the autoscaler's third
  server is in HAProxy's rotation (its `in_rotation` event), split into the decision
  (step -> server process started) and the start (process -> in rotation);
- a few connections land on the new server, most of the others leave: the fleet
  scales back to 2 after the scale-down window; drain = from the emptiest server's
  drain start to its process stopped (the balancer lever, the server's paced drain
  of its clients, the stop by PID).
Baseline, measured in the same run: a bare server process from spawn to /readyz 200.
Prints medians (and min/max) and the ratio of the reaction to that baseline.

`--spare N` keeps N warm spares (`iofleet up --spare N`, which gives each spare a
HAProxy slot beyond `--max`): the reaction is then step -> a ready spare put in rotation
(its `promoted` event is the decision), and each run starts once the spares are ready
again.

`python -m bench.autoscaler_bench [--runs 5] [--sync 5] [--scrape 1] [--window 5] [--spare 1]`
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from tempfile import TemporaryDirectory
from typing import Any

import aiohttp
import jwt
from rich.console import Console
from rich.progress import Progress
from rich.table import Table

from bench.wire import WireClient
from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import FleetState
from iofleet.local_servers import ServerSpec, start_server
from iofleet.processes import free_port, http_status
from server.contract import DRAIN_DELAY_SECONDS, DRAIN_SECONDS

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
LOAD = 60
STAY_OLD = 24
ON_NEW = 6
console = Console(width=110)


def iofleet(env: dict[str, str], *args: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "iofleet", *args],
        capture_output=True,
        text=True,
        timeout=180,
        cwd=REPO,
        env=env,
        check=False,
    )
    if done.returncode != 0:
        raise SystemExit(f"iofleet {args[0]} failed:\n{done.stdout}{done.stderr}")


def status(state_dir: Path) -> dict[str, Any]:
    state = FleetState.load(state_dir)
    assert state is not None and state.autoscaler is not None
    with urllib.request.urlopen(f"{state.autoscaler.status_url}status", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def wait_for(check: Callable[[], Any], within: float, what: str) -> Any:
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        found = await asyncio.to_thread(check)
        if found:
            return found
        await asyncio.sleep(0.05)
    raise TimeoutError(f"{what}: not within {within:g}s")


def event(
    state_dir: Path, kind: str | tuple[str, ...], since: float, node: str | None = None
) -> Any:
    kinds = (kind,) if isinstance(kind, str) else kind
    for item in status(state_dir)["fleet_events"]:
        if item["kind"] in kinds and item["at"] >= since and node in (None, item["node"]):
            return item
    return None


def ready_spares(state_dir: Path) -> set[str]:
    """Spares that are ready and not yet promoted, stopped or failed (from the events)."""
    ready: set[str] = set()
    for item in status(state_dir)["fleet_events"]:
        if item["kind"] == "spare_ready":
            ready.add(item["node"])
        elif item["kind"] in ("promoted", "stopped", "start_failed"):
            ready.discard(item["node"])
    return ready


def settled(state_dir: Path, spare: int) -> bool:
    """Two servers in rotation and `spare` ready spares: ready for the next step."""
    state = FleetState.load(state_dir)
    return (
        state is not None
        and len(state.servers) == 2 + spare
        and status(state_dir)["current"] == 2
        and len(ready_spares(state_dir)) == spare
    )


async def connect(session: aiohttp.ClientSession, url: str, secret: str, n: int) -> list[Any]:
    now = int(time.time())

    async def one(i: int) -> WireClient:
        token = jwt.encode({"sub": f"b{now}-{i}", "iat": now, "exp": now + 3600}, secret, "HS256")
        client = WireClient(session, url.rstrip("/"))
        await client.connect({"token": token})
        return client

    return list(await asyncio.gather(*(one(i) for i in range(n))))


def bare_start(state_dir: Path, env: dict[str, str]) -> float:
    """Baseline: one server process from spawn to /readyz 200 (no balancer, no autoscaler)."""
    state = FleetState.load(state_dir)
    assert state is not None and state.redis is not None
    spec = ServerSpec.on_free_ports("baseline", f"redis://127.0.0.1:{state.redis.port}/0")
    started = time.monotonic()
    server = start_server(spec, {**env, **load_secrets(state_dir)}, Path(state.logs))
    try:
        server.wait_ready(30)
        return time.monotonic() - started
    finally:
        server.stop()


async def one_run(state_dir: Path, env: dict[str, str], args: argparse.Namespace) -> dict[str, Any]:
    state = FleetState.load(state_dir)
    assert state is not None
    secret = load_secrets(state_dir)["IOFLEET_JWT_SECRET"]
    within = args.sync + args.scrape + 60
    async with aiohttp.ClientSession() as session:
        # The step starts with the first connection: the autoscaler may act before the
        # last one is open.
        step = time.time()
        load = await connect(session, state.url, secret, LOAD)
        ramp = time.time() - step
        # The decision: a new process started, or a warm spare chosen.
        started = await wait_for(
            lambda: event(state_dir, ("started", "promoted"), step), within, "scale-up"
        )
        node = started["node"]
        ready = await wait_for(
            lambda: event(state_dir, "in_rotation", step, node), 60, f"{node} in rotation"
        )
        # Clients on the new server; then most of the others leave.
        newcomers = await connect(session, state.url, secret, ON_NEW)
        for client in load[STAY_OLD:]:
            with contextlib.suppress(Exception):
                await client.close()
        drop = time.time()
        drain = await wait_for(
            lambda: event(state_dir, "drain_started", drop),
            args.window + args.sync + args.scrape + 60,
            "scale-down",
        )
        stopped = await wait_for(
            lambda: event(state_dir, "stopped", drop, drain["node"]),
            DRAIN_DELAY_SECONDS + DRAIN_SECONDS + 60,
            f"{drain['node']} stopped",
        )
        for client in load[:STAY_OLD] + newcomers:
            with contextlib.suppress(Exception):  # the drained ones were closed for us
                await client.close()
    return {
        "reaction_s": ready["at"] - step,
        "decision_s": started["at"] - step,
        "start_s": ready["at"] - started["at"],
        "drain_s": stopped["at"] - drain["at"],
        "ramp_s": ramp,
        "drained": drain["node"],
        "new": node,
    }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    env = {
        **os.environ,
        "IOFLEET_AUTOSCALER_SYNC_SECONDS": str(args.sync),
        "IOFLEET_AUTOSCALER_SCRAPE_SECONDS": str(args.scrape),
        "IOFLEET_AUTOSCALER_SCALE_DOWN_STABILIZATION_SECONDS": str(args.window),
        "IOFLEET_LOG_LEVEL": "WARNING",
    }
    runs: list[dict[str, Any]] = []
    baselines: list[float] = []
    with TemporaryDirectory(prefix="iofleet-autoscaler-bench-") as tmp:
        state_dir = Path(tmp) / "fleet"
        up = ["up", "--detach", "--servers", "2", "--min", "2", "--max", "3"]
        up += ["--spare", str(args.spare), "--target-connections", "20", "--port", str(free_port())]
        iofleet(env, *up, "--state-dir", str(state_dir))
        try:
            state = FleetState.load(state_dir)
            assert state is not None and http_status(state.url) == 200
            with Progress(console=console, transient=True) as progress:
                task = progress.add_task("scale up, scale down", total=args.runs)
                for _ in range(args.runs):
                    # At 2 servers (plus ready spares) with an empty fleet before a step.
                    await wait_for(lambda: settled(state_dir, args.spare), 60, "settled")
                    baselines.append(await asyncio.to_thread(bare_start, state_dir, env))
                    runs.append(await one_run(state_dir, env, args))
                    progress.advance(task)
        finally:
            iofleet(env, "down", "--state-dir", str(state_dir))
    return {"settings": vars(args), "runs": runs, "baseline_start_s": baselines}


def report(result: dict[str, Any]) -> None:
    runs = result["runs"]
    base = statistics.median(result["baseline_start_s"])
    table = Table(
        title=f"local autoscaler, {len(runs)} runs, {result['settings']['spare']} warm spare(s)"
        f" (sync {result['settings']['sync']}s,"
        f" scrape {result['settings']['scrape']}s, drain {DRAIN_DELAY_SECONDS:g}s delay +"
        f" {DRAIN_SECONDS:g}s window)"
    )
    for column in ("measure", "median s", "min s", "max s", "x bare start"):
        table.add_column(column, justify="right" if column != "measure" else "left")
    rows = [
        ("reaction: load step -> new server in rotation", "reaction_s"),
        ("  decision: step -> server started (or spare chosen)", "decision_s"),
        ("  start: process (or spare) -> in HAProxy rotation", "start_s"),
        (f"drain: emptiest server ({ON_NEW} clients) out and stopped", "drain_s"),
    ]
    for label, key in rows:
        values = [run[key] for run in runs]
        median = statistics.median(values)
        ratio = f"{median / base:.1f}" if key != "drain_s" else ""
        table.add_row(label, f"{median:.2f}", f"{min(values):.2f}", f"{max(values):.2f}", ratio)
    table.add_row("baseline: bare server spawn -> /readyz", f"{base:.2f}", "", "", "1.0")
    console.print(table)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--sync", type=float, default=5.0, help="autoscaler sync period (s)")
    parser.add_argument("--scrape", type=float, default=1.0, help="scrape interval (s)")
    parser.add_argument("--window", type=int, default=5, help="scale-down window (s)")
    parser.add_argument("--spare", type=int, default=0, help="warm spares kept out of rotation")
    args = parser.parse_args()
    result = asyncio.run(main_async(args))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / f"autoscaler_bench_spare{args.spare}.json").write_text(json.dumps(result, indent=2))
    report(result)


if __name__ == "__main__":
    main()
