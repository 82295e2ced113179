"""The local backend end to end: `iofleet up --min 2 --max 5 --target-connections 20` with
real Redis, servers, HAProxy and the official JS client, scaled by connections.

Short sync, scrape and scale-down window (autoscaler settings) and a short paced drain
(server settings) keep the run bounded: about a minute.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from autoscaler.local.levers import pool_line
from iofleet.fleet_secrets import SECRETS_FILE
from iofleet.fleet_state import FleetState
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.processes import free_port, pid_alive
from tests.support.cdp import Chromium
from tests.support.cluster import Crowd
from tests.support.jsclient import JsClients
from tests.support.procs import TEST_ADMIN_TOKEN, TEST_JWT_SECRET, run_iofleet

SYNC_S = 2.0
SCRAPE_S = 1.0
WINDOW_S = 8
MIN, MAX, TARGET = 2, 5, 20
ROOM = "autoscaled"
FLEET_ENV = {
    **os.environ,
    "IOFLEET_AUTOSCALER_SYNC_SECONDS": str(SYNC_S),
    "IOFLEET_AUTOSCALER_SCRAPE_SECONDS": str(SCRAPE_S),
    "IOFLEET_AUTOSCALER_SCALE_DOWN_STABILIZATION_SECONDS": str(WINDOW_S),
    "IOFLEET_DRAIN_DELAY": "1",
    "IOFLEET_DRAIN_SECONDS": "3",
    "IOFLEET_RATE_LIMIT": "200",
}


def iofleet(*args: str, within: float = 120) -> subprocess.CompletedProcess[str]:
    return run_iofleet(*args, env=FLEET_ENV, within=within)


@dataclass
class LocalFleet:
    state_dir: Path
    pids: set[int]
    """Every PID fleet.json listed at any time (servers come and go)."""

    def state(self) -> FleetState:
        state = FleetState.load(self.state_dir)
        assert state is not None, "fleet.json is gone"
        self.pids |= {s.pid for s in state.servers}
        if state.autoscaler is not None:
            self.pids.add(state.autoscaler.pid)
        return state

    def servers(self) -> list[str]:
        return sorted(s.node_id for s in self.state().servers)

    def status(self) -> dict[str, Any]:
        autoscaler = self.state().autoscaler
        assert autoscaler is not None
        with urllib.request.urlopen(f"{autoscaler.status_url}status", timeout=5) as response:
            body: dict[str, Any] = json.loads(response.read())
            return body

    async def in_rotation(self) -> set[str]:
        """Servers the balancer gives new sessions to."""
        state = self.state()
        balancer = state.balancer
        assert balancer is not None
        if balancer.kind == "nginx":  # a pool line without `down`, in the live config
            text = await asyncio.to_thread(Path(balancer.config).read_text)
            return {
                s.node_id for s in state.servers if pool_line(f"127.0.0.1:{s.port}").search(text)
            }
        assert balancer.admin_socket and balancer.backend
        states = await HaproxyRuntime(balancer.admin_socket).servers_state(balancer.backend)
        return {s.name for s in states if s.in_rotation}


@pytest.fixture(params=["haproxy", "nginx"])
def fleet(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[LocalFleet]:
    state_dir = tmp_path / "fleet"
    state_dir.mkdir()
    # The fleet's secrets, made here so the test signs its clients' tokens.
    secrets = state_dir / SECRETS_FILE
    secrets.write_text(
        f"IOFLEET_JWT_SECRET={TEST_JWT_SECRET}\nIOFLEET_ADMIN_TOKEN={TEST_ADMIN_TOKEN}\n"
    )
    secrets.chmod(0o600)
    up = iofleet(
        "up", "--detach", "--servers", str(MIN), "--min", str(MIN), "--max", str(MAX),
        "--target-connections", str(TARGET), "--port", str(free_port()),
        "--balancer", request.param,
        "--state-dir", str(state_dir),
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    yield from running_fleet(state_dir, FLEET_ENV)


def running_fleet(state_dir: Path, env: dict[str, str]) -> Iterator[LocalFleet]:
    """The started fleet in `state_dir`; then `iofleet down`, and no PID it ever listed
    is left running."""
    running = LocalFleet(state_dir, set())
    running.pids.add(running.state().pid)
    try:
        yield running
    finally:
        if FleetState.load(state_dir) is not None:
            running.state()  # the last PIDs
        down = run_iofleet("down", "--state-dir", str(state_dir), env=env)
        assert down.returncode == 0, down.stdout + down.stderr
        left = {pid for pid in running.pids if pid_alive(pid)}
        assert not left, f"still running after iofleet down: {left}"


async def _until(check: Any, within: float, what: str, every: float = 0.1) -> float:
    """Poll `check` (sync or async) until true; returns the loop time it became true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return loop.time()
        if loop.time() > deadline:
            raise TimeoutError(f"{what}: not within {within:g}s")
        await asyncio.sleep(every)


async def test_scales_up_on_load_and_drains_down_to_min_losing_no_message(
    fleet: LocalFleet, js: JsClients
) -> None:
    loop = asyncio.get_running_loop()
    state = fleet.state()
    assert fleet.servers() == ["node1", "node2"]
    assert state.autoscaler is not None and pid_alive(state.autoscaler.pid)
    assert fleet.status()["max"] == MAX
    assert state.balancer is not None
    # HAProxy: its sticky cookie; nginx: the node id in the sid.
    crowd = Crowd(js, state.url, cookies=state.balancer.kind == "haproxy")

    # Load step: 120 connections (a third polling-only: every request needs stickiness).
    crowd_names = [f"c{i}" for i in range(120)]
    for i, name in enumerate(crowd_names):
        await crowd.open(name, transports=["polling"] if i % 3 == 0 else None)
    await crowd.wait_connected(crowd_names, within=90)
    loaded_at = loop.time()
    assert set(crowd.spread(crowd_names)) <= {"node1", "node2"}

    # 120 / 20 = 6 wanted, max 5: five servers listed within two sync periods (plus the
    # age of the scrape the decision reads), all in HAProxy's rotation soon after.
    listed_at = await _until(
        lambda: len(fleet.servers()) == MAX, 2 * SYNC_S + SCRAPE_S + 1, "5 servers listed"
    )
    new_nodes = set(fleet.servers()) - {"node1", "node2"}
    assert new_nodes == {"node3", "node4", "node5"}
    ready_at = await _until(
        lambda: _all_in_rotation(fleet, set(fleet.servers())), 30, "all 5 in rotation"
    )
    print(
        f"\nscale-up: listed {listed_at - loaded_at:.2f}s, in rotation"
        f" {ready_at - loaded_at:.2f}s after the load step"
    )
    status = fleet.status()
    assert status["current"] == MAX or status["desired"] == MAX, status
    assert any(p["acted"] and p["desired"] == MAX for p in status["timeline"]), status["timeline"]
    await _status_page_shows(fleet, servers=MAX)

    # New connections land on the new servers. HAProxy's leastconn sends every one
    # there (they hold nothing yet). nginx's least_conn counts only its pool's requests
    # (a session's WebSocket goes through the sid map's per-node upstream), so new
    # sessions spread over all five: each new server gets some.
    haproxy = state.balancer.kind == "haproxy"
    newcomers = [f"new{i}" for i in range(9 if haproxy else 20)]
    for i, name in enumerate(newcomers):
        # One at a time: leastconn counts a session once its poll or WebSocket is open.
        await crowd.open(name, transports=["polling"] if i % 2 else None)
        await crowd.wait_connected([name])
        await asyncio.sleep(0.3 if haproxy else 0.05)
    landed = {crowd.node(n) for n in newcomers}
    if haproxy:
        assert landed <= new_nodes, crowd.spread(newcomers)
    else:
        assert new_nodes <= landed, crowd.spread(newcomers)

    # Drop to 10 connections, unevenly, so the emptiest three are known: node1 keeps 4,
    # node2 1, one new server 3, another 2, the third none.
    def on(node: str, names: list[str], count: int) -> list[str]:
        chosen = [n for n in names if crowd.node(n) == node][:count]
        assert len(chosen) == count, (node, crowd.spread(names))
        return chosen

    spread = crowd.spread(newcomers)
    fullest, second, emptiest = sorted(new_nodes, key=lambda n: -spread.get(n, 0))
    keep = on("node1", crowd_names, 4) + on("node2", crowd_names, 1)
    keep += on(fullest, newcomers, 3) + on(second, newcomers, 2)
    expected_drained = {"node2", second, emptiest}
    await crowd.join(keep, ROOM)
    where = {name: crowd.node(name) for name in keep}
    for name in set(crowd_names + newcomers) - set(keep):
        await js.close(name)
    mark = len(js.messages)
    dropped_at = loop.time()

    # Chat from every kept client in turn; a message counts once the server acked it.
    sent: list[tuple[float, str]] = []
    chatting = True
    joined_at: dict[str, float] = dict.fromkeys(keep, dropped_at)
    joins: dict[str, int] = dict.fromkeys(keep, 1)

    async def send(sender: str, text: str) -> None:
        emitted = loop.time()
        try:
            ack = await js.call(sender, "chat:message", {"room": ROOM, "text": text}, timeout=12)
        except TimeoutError:
            return  # the sender was moving: not acked, not expected anywhere
        if isinstance(ack, dict) and ack.get("ok", True):
            sent.append((emitted, text))

    async def chat() -> None:
        pending = []
        for k in range(900):  # bounded: 90 s at most
            if not chatting:
                break
            pending.append(asyncio.create_task(send(keep[k % len(keep)], f"m{k}")))
            await asyncio.sleep(0.1)
        await asyncio.gather(*pending)

    async def rejoin() -> None:
        # A drained client reconnects by itself (a new hello); it rejoins the room then.
        while chatting:
            for name in keep:
                if len(crowd.hellos(name)) > joins[name]:
                    joins[name] = len(crowd.hellos(name))
                    ack = await js.call(name, "room:join", {"room": ROOM})
                    assert ack["ok"], ack
                    joined_at[name] = loop.time()
            await asyncio.sleep(0.05)

    chat_task = asyncio.create_task(chat())
    rejoin_task = asyncio.create_task(rejoin())
    try:
        # Scale-down window, then a drain per server (1 s delay + 3 s window), in parallel.
        down_at = await _until(
            lambda: len(fleet.servers()) == MIN, WINDOW_S + 4 * SYNC_S + 25, "down to min"
        )
        survivors = set(fleet.servers())
        drained = ({"node1", "node2"} | new_nodes) - survivors
        assert drained == expected_drained, (where, fleet.status()["fleet_events"])
        movers = [n for n in keep if where[n] in drained]
        assert movers, f"no kept client was on a drained server: {where}, kept {survivors}"
        await _until(lambda: all(joins[n] >= 2 and joined_at[n] > dropped_at for n in movers),
                     30, "drained clients back and rejoined")  # fmt: skip
        await asyncio.sleep(1.5)
    finally:
        chatting = False
        await chat_task
        await rejoin_task  # it stops once chatting does
    print(f"scale-down: at min {down_at - dropped_at:.2f}s after the drop to 10 connections")

    assert all(crowd.node(n) in survivors for n in keep), {n: crowd.hellos(n) for n in keep}
    expected = {n: [t for at, t in sent if at > joined_at[n]] for n in keep}
    assert all(expected[n] for n in keep), "nothing acked after the drain"

    def missing() -> dict[str, list[str]]:
        lost = {n: [t for t in texts if not crowd.received(n, t)] for n, texts in expected.items()}
        return {n: texts for n, texts in lost.items() if texts}

    await crowd.until(lambda: not missing(), 10, f"every message heard; lost {missing()}")
    assert [m for m in js.messages[mark:] if m.get("type") == "connect_error"] == []
    # The drained servers' processes are gone, and fleet.json lists only the survivors.
    status = fleet.status()
    assert {n["name"] for n in status["nodes"]} <= survivors | drained
    stopped = {e["node"] for e in status["fleet_events"] if e["kind"] == "stopped"}
    assert stopped == drained, status["fleet_events"]
    # Each one went through its own paced drain to the end (not a kill).
    logs = Path(fleet.state().logs)
    for node in drained:
        assert "drain.done" in (logs / f"{node}.log").read_text(), node
    assert await fleet.in_rotation() == survivors


async def _all_in_rotation(fleet: LocalFleet, names: set[str]) -> bool:
    return names <= await fleet.in_rotation()


def test_local_backend_without_a_fleet_says_so_in_one_line(tmp_path: Path) -> None:
    base = [sys.executable, "-m", "autoscaler", "--backend", "local"]
    env = {k: v for k, v in os.environ.items() if not k.startswith("IOFLEET_AUTOSCALER_")}
    cases = {
        "--state-dir": [],
        "no fleet recorded": ["--state-dir", str(tmp_path)],
    }
    for expected, extra in cases.items():
        done = subprocess.run(
            base + extra, capture_output=True, text=True, timeout=30, env=env, check=False
        )
        assert done.returncode == 2, done.stderr
        assert done.stderr.count("\n") == 1 and expected in done.stderr, done.stderr


def test_up_refuses_a_min_or_servers_above_max(tmp_path: Path) -> None:
    for args in (["--min", "4", "--max", "3"], ["--servers", "4", "--max", "3"], ["--min", "2"]):
        up = ["up", "--detach", "--port", str(free_port()), "--state-dir", str(tmp_path)]
        try:
            done = iofleet(*up, *args, within=60)
            assert done.returncode == 2, done.stdout + done.stderr
            assert "--max" in done.stderr
            assert FleetState.load(tmp_path) is None
        finally:
            iofleet("down", "--state-dir", str(tmp_path))  # had it started anything


async def _status_page_shows(fleet: LocalFleet, servers: int) -> None:
    """The status page, in Chromium: the chart with its decisions and a row per server."""
    autoscaler = fleet.state().autoscaler
    assert autoscaler is not None
    browser = await Chromium().start()
    try:
        page = await browser.new_page(autoscaler.status_url)
        await page.wait_for(
            "document.querySelector('#chart path.connections') !== null"
            " && document.querySelector('#chart path.desired') !== null"
            " && document.querySelectorAll('#chart circle.decision').length > 0"
            f" && document.querySelectorAll('#nodes tbody tr').length === {servers}"
        )
        reasons = await page.evaluate(
            "[...document.querySelectorAll('#chart circle.decision title')].map(t => t.textContent)"
        )
        assert any(f"→ {servers}: " in reason for reason in reasons), reasons
    finally:
        await browser.stop()
