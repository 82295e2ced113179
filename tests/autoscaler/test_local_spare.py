"""The local backend's warm spare (`iofleet up --spare N`, IOFLEET_AUTOSCALER_SPARE) with
real Redis, servers, HAProxy and stock python-socketio clients: the spare runs ready but
out of the balancer's rotation and out of the replica count, a load step puts that same
process in rotation (no new process), and a new spare starts behind it; an autoscaler
started again finds the spare as a spare."""

from __future__ import annotations

import asyncio
import json
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from iofleet.fleet_secrets import SECRETS_FILE
from iofleet.processes import free_port, pid_alive, spawn, stop_pid
from iofleet.up import AutoscaleConfig
from tests.autoscaler.test_local_backend import FLEET_ENV, LocalFleet, _until, running_fleet
from tests.support.procs import TEST_ADMIN_TOKEN, TEST_JWT_SECRET, make_token, run_iofleet

MIN, MAX, TARGET = 2, 4, 20
LOAD = 60  # 30 per server, 1.5x the target: one more server wanted


def _up(state_dir: Path, balancer: str) -> Any:
    """`iofleet up --spare 1` (the flag; IOFLEET_AUTOSCALER_SPARE is its variable)."""
    state_dir.mkdir()
    secrets = state_dir / SECRETS_FILE
    secrets.write_text(
        f"IOFLEET_JWT_SECRET={TEST_JWT_SECRET}\nIOFLEET_ADMIN_TOKEN={TEST_ADMIN_TOKEN}\n"
    )
    secrets.chmod(0o600)
    return run_iofleet(
        "up", "--detach", "--servers", str(MIN), "--min", str(MIN), "--max", str(MAX),
        "--target-connections", str(TARGET), "--port", str(free_port()),
        "--balancer", balancer, "--state-dir", str(state_dir), "--spare", "1",
        env=FLEET_ENV,
    )  # fmt: skip


@pytest.fixture
def spare_fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    state_dir = tmp_path / "fleet"
    up = _up(state_dir, "haproxy")
    assert up.returncode == 0, up.stdout + up.stderr
    yield from running_fleet(state_dir, FLEET_ENV)


def _events(fleet: LocalFleet, kind: str, node: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in fleet.status()["fleet_events"] if e["kind"] == kind and node in (None, e["node"])
    ]


def _connections(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/admin/status", timeout=5) as r:
        return int(json.loads(r.read())["connections"])


async def _connect(url: str, count: int) -> list[socketio.AsyncClient]:
    clients = [socketio.AsyncClient(reconnection=False) for _ in range(count)]
    await asyncio.gather(
        *(
            c.connect(
                url, auth={"token": make_token(f"u{i}")}, transports=["websocket"],
                wait_timeout=20,
            )
            for i, c in enumerate(clients)
        )
    )  # fmt: skip
    return clients


async def test_a_warm_spare_waits_out_of_rotation_then_serves_the_load_step(
    spare_fleet: LocalFleet,
) -> None:
    fleet = spare_fleet
    loop = asyncio.get_running_loop()
    # The spare: a third process, ready, but neither in rotation nor a replica.
    await _until(lambda: _events(fleet, "spare_ready", "node3"), 30, "spare node3 ready")
    assert fleet.servers() == ["node1", "node2", "node3"]
    spare = fleet.state().server("node3")
    assert await fleet.in_rotation() == {"node1", "node2"}
    status = fleet.status()
    assert status["current"] == MIN, status
    assert {n["name"] for n in status["nodes"]} == {"node1", "node2"}

    clients: list[socketio.AsyncClient] = []
    try:
        step = loop.time()
        wall_step = fleet.status()["now"]
        clients = await _connect(fleet.state().url, LOAD)
        # Out of rotation: the step went to the two replicas only.
        assert _connections(spare.admin_port) == 0
        in_rotation = await _until(
            lambda: _events(fleet, "in_rotation", "node3"), 20, "spare node3 in rotation"
        )
        (promoted,) = _events(fleet, "promoted", "node3")
        (joined,) = _events(fleet, "in_rotation", "node3")
        print(
            f"\nload step -> spare in rotation {in_rotation - step:.2f}s"
            f" (decision {promoted['at'] - wall_step:.2f}s,"
            f" join {joined['at'] - promoted['at']:.2f}s)"
        )
        # The same process, now serving: no start for node3 after the step.
        assert fleet.state().server("node3").pid == spare.pid and pid_alive(spare.pid)
        assert _events(fleet, "started", "node3") == []
        assert "warm spare" in joined["detail"]
        assert "node3" in await fleet.in_rotation()
        # A new spare behind it, in the last free slot, itself out of rotation.
        await _until(lambda: _events(fleet, "spare_ready", "node4"), 30, "new spare node4")
        assert "node4" not in await fleet.in_rotation()
        await _until(lambda: fleet.status()["current"] == MIN + 1, 10, "three replicas")
    finally:
        await asyncio.gather(*(c.disconnect() for c in clients if c.connected))


async def test_an_autoscaler_started_again_keeps_the_spare_a_spare(
    spare_fleet: LocalFleet,
) -> None:
    """The spare outlives the autoscaler that started it: the next one counts it out of
    the replicas (no scale-down to make room for it, no second spare) and promotes that
    same process on a load step."""
    fleet = spare_fleet
    await _until(lambda: _events(fleet, "spare_ready", "node3"), 30, "spare node3 ready")
    spare = fleet.state().server("node3")
    first = fleet.state().autoscaler
    assert first is not None
    stop_pid(first.pid, grace=10)
    await _until(lambda: fleet.state().autoscaler is None, 10, "the autoscaler unrecorded")
    settings = AutoscaleConfig(MIN, MAX, TARGET, spare=1).env()
    log_path = fleet.state_dir / "logs" / "autoscaler-again.log"
    argv = [sys.executable, "-m", "autoscaler", "--backend", "local"]
    again = spawn([*argv, "--state-dir", str(fleet.state_dir)], log_path, {**FLEET_ENV, **settings})
    try:
        await _until(
            lambda: (fleet.state().autoscaler or first).pid == again.pid, 20, "new autoscaler"
        )
        # Two syncs and more: a spare counted as a replica would show as 3 current.
        await _until(lambda: len(fleet.status()["timeline"]) >= 3, 20, "three syncs")
        status = fleet.status()
        assert [p["current"] for p in status["timeline"]] == [MIN] * len(status["timeline"])
        assert {n["name"] for n in status["nodes"]} == {"node1", "node2"}
        assert fleet.servers() == ["node1", "node2", "node3"], "a second spare started"
        assert fleet.state().server("node3") == spare
        assert await fleet.in_rotation() == {"node1", "node2"}
        clients = await _connect(fleet.state().url, LOAD)
        try:
            await _until(
                lambda: _events(fleet, "in_rotation", "node3"), 20, "spare node3 in rotation"
            )
            assert fleet.state().server("node3").pid == spare.pid
            assert _events(fleet, "started", "node3") == []
        finally:
            await asyncio.gather(*(c.disconnect() for c in clients if c.connected))
    finally:
        stop_pid(again.pid, grace=10, process=again)


async def test_a_restart_replaces_the_spare_too_and_keeps_the_replicas(
    spare_fleet: LocalFleet,
) -> None:
    """`iofleet restart` beside the autoscaler: the old spare (old code) is stopped, the
    serving servers replaced, and once the hold ends the autoscaler starts a fresh spare;
    the replica count is what it was."""
    fleet = spare_fleet
    await _until(lambda: _events(fleet, "spare_ready", "node3"), 30, "spare node3 ready")
    before = {s.node_id: s.pid for s in fleet.state().servers}
    restart = run_iofleet("restart", "--state-dir", str(fleet.state_dir), env=FLEET_ENV)
    assert restart.returncode == 0, restart.stdout + restart.stderr
    assert "spare node3 stopped" in restart.stdout, restart.stdout
    assert restart.stdout.count("drained and stopped") == MIN, restart.stdout
    # The restart ends by releasing its hold; the autoscaler records `resumed` at its
    # next sync, which a loaded machine may delay past the restart's exit.
    await _until(lambda: _events(fleet, "resumed"), 30, "the autoscaler resumed")
    (resumed,) = _events(fleet, "resumed")
    await _until(
        lambda: [e for e in _events(fleet, "spare_ready") if e["at"] > resumed["at"]],
        30,
        "a fresh spare",
    )
    state = fleet.state()
    spares = [s for s in state.servers if s.spare]
    serving = [s for s in state.servers if not s.spare]
    assert len(spares) == 1 and len(serving) == MIN, state.servers
    assert not {s.pid for s in state.servers} & set(before.values())
    assert not any(pid_alive(pid) for pid in before.values())
    assert await fleet.in_rotation() == {s.node_id for s in serving}
    assert fleet.status()["current"] == MIN
    moves = {"started", "drain_started", "promoted"}
    assert [e for e in fleet.status()["fleet_events"] if e["kind"] in moves] == []


def test_a_spare_with_nginx_is_refused_in_one_line(tmp_path: Path) -> None:
    state_dir = tmp_path / "fleet"
    try:
        up = _up(state_dir, "nginx")
        assert up.returncode == 2, up.stdout + up.stderr
        assert "warm spares need the haproxy balancer" in up.stdout + up.stderr
        assert not (state_dir / "fleet.json").exists(), "something was started"
    finally:
        run_iofleet("down", "--state-dir", str(state_dir), env=FLEET_ENV)


def test_spare_needs_the_autoscaler(tmp_path: Path) -> None:
    up = run_iofleet("up", "--spare", "1", "--state-dir", str(tmp_path), env=FLEET_ENV)
    assert up.returncode == 2, up.stdout + up.stderr
    assert "need --max" in up.stdout + up.stderr
