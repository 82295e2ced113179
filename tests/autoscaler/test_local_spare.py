"""The local backend's warm spare (IOFLEET_AUTOSCALER_SPARE) with real Redis, servers,
HAProxy and stock python-socketio clients: the spare runs ready but out of the
balancer's rotation and out of the replica count, a load step puts that same process in
rotation (no new process), and a new spare starts behind it."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import socketio

from iofleet.fleet_secrets import SECRETS_FILE
from iofleet.processes import free_port, pid_alive
from tests.autoscaler.test_local_backend import FLEET_ENV, LocalFleet, _until, running_fleet
from tests.support.procs import TEST_ADMIN_TOKEN, TEST_JWT_SECRET, make_token, run_iofleet

MIN, MAX, TARGET = 2, 4, 20
SPARE_ENV = {**FLEET_ENV, "IOFLEET_AUTOSCALER_SPARE": "1"}
LOAD = 60  # 30 per server, 1.5x the target: one more server wanted


def _up(state_dir: Path, balancer: str) -> Any:
    state_dir.mkdir()
    secrets = state_dir / SECRETS_FILE
    secrets.write_text(
        f"IOFLEET_JWT_SECRET={TEST_JWT_SECRET}\nIOFLEET_ADMIN_TOKEN={TEST_ADMIN_TOKEN}\n"
    )
    secrets.chmod(0o600)
    return run_iofleet(
        "up", "--detach", "--servers", str(MIN), "--min", str(MIN), "--max", str(MAX),
        "--target-connections", str(TARGET), "--port", str(free_port()),
        "--balancer", balancer, "--state-dir", str(state_dir),
        env=SPARE_ENV,
    )  # fmt: skip


@pytest.fixture
def spare_fleet(tmp_path: Path) -> Iterator[LocalFleet]:
    state_dir = tmp_path / "fleet"
    up = _up(state_dir, "haproxy")
    assert up.returncode == 0, up.stdout + up.stderr
    yield from running_fleet(state_dir, SPARE_ENV)


def _events(fleet: LocalFleet, kind: str, node: str | None = None) -> list[dict[str, Any]]:
    return [
        e for e in fleet.status()["fleet_events"] if e["kind"] == kind and node in (None, e["node"])
    ]


def _connections(admin_port: int) -> int:
    with urllib.request.urlopen(f"http://127.0.0.1:{admin_port}/admin/status", timeout=5) as r:
        return int(json.loads(r.read())["connections"])


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

    clients = [socketio.AsyncClient(reconnection=False) for _ in range(LOAD)]
    try:
        step = loop.time()
        wall_step = fleet.status()["now"]
        await asyncio.gather(
            *(
                c.connect(
                    fleet.state().url,
                    auth={"token": make_token(f"u{i}")},
                    transports=["websocket"],
                    wait_timeout=20,
                )
                for i, c in enumerate(clients)
            )
        )
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


def test_a_spare_with_nginx_is_refused_in_one_line(tmp_path: Path) -> None:
    state_dir = tmp_path / "fleet"
    try:
        up = _up(state_dir, "nginx")
        assert up.returncode != 0, up.stdout + up.stderr
        log = (state_dir / "logs" / "autoscaler.log").read_text()
        assert "need the haproxy balancer" in up.stdout + up.stderr + log
    finally:
        run_iofleet("down", "--state-dir", str(state_dir), env=SPARE_ENV)
