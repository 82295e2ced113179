"""`iofleet up` / `iofleet down` as a user runs them: real processes, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from iofleet.drain import drain_server
from iofleet.fleet_secrets import load_secrets
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.processes import free_port, http_status, pid_alive, tcp_answers
from tests.support.jsclient import JsClients
from tests.support.metrics import metric_or_zero
from tests.support.procs import run_iofleet

REPO = Path(__file__).resolve().parents[2]


# A drained server with no clients exits after its drain delay: long enough here for
# the nginx rotation check below to watch it.
FLEET_ENV = {**os.environ, "IOFLEET_DRAIN_DELAY": "30"}


def iofleet(*args: str, within: float = 120) -> subprocess.CompletedProcess[str]:
    return run_iofleet(*args, env=FLEET_ENV, within=within)


def fleet_pids(state: dict[str, Any]) -> list[int]:
    pids = [state["pid"], state["balancer"]["pid"], state["redis"]["pid"]]
    return pids + [s["pid"] for s in state["servers"]]


def guest_token(base: str) -> str:
    request = urllib.request.Request(f"{base}/auth/guest", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        token: str = json.loads(response.read())["token"]
        return token


async def wait_out_of_rotation(state: dict[str, Any], node: str, within: float = 28) -> None:
    """Until the balancer itself sends `node` no new session.

    HAProxy says so in `show servers state`. nginx OSS has no such API: send handshakes
    through it and watch the node's count of handshakes refused while draining. nginx's
    passive health also skips a server for `fail_timeout` (10 s) after one refusal, so
    the count must stay still for longer than that: only the readiness watcher's `down`
    keeps the node out for good.
    """
    balancer = state["balancer"]
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    if balancer["kind"] == "haproxy":
        runtime = HaproxyRuntime(balancer["admin_socket"])
        while loop.time() < deadline:
            states = {s.name: s for s in await runtime.servers_state(balancer["backend"])}
            if node not in states or not states[node].up:
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"{node} still in HAProxy's rotation after {within}s")
    admin = next(
        f"http://127.0.0.1:{s['admin_port']}" for s in state["servers"] if s["node_id"] == node
    )
    handshake = f"http://127.0.0.1:{balancer['port']}/socket.io/?EIO=4&transport=polling"
    refused = {"reason": "draining"}
    still_since, last = loop.time(), -1.0
    while loop.time() < deadline:
        assert await asyncio.to_thread(http_status, handshake) == 200
        count = await asyncio.to_thread(
            metric_or_zero, admin, "iofleet_connections_rejected_total", refused
        )
        if count != last:
            still_since, last = loop.time(), count
        elif loop.time() - still_since > 12:
            return
        await asyncio.sleep(0.2)
    raise TimeoutError(f"nginx still sends {node} handshakes after {within}s")


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
async def test_up_detach_then_down_leaves_no_process(kind: str, tmp_path: Path) -> None:
    state_dir, port = tmp_path / "state", free_port()
    up = await asyncio.to_thread(
        iofleet, "up", "--detach", "--state-dir", str(state_dir), "--port", str(port),
        "--balancer", kind,
    )  # fmt: skip
    assert up.returncode == 0, up.stdout + up.stderr
    state = json.loads((state_dir / "fleet.json").read_text())
    pids = fleet_pids(state)
    try:
        assert all(pid_alive(pid) for pid in pids)
        assert [s["node_id"] for s in state["servers"]] == ["node1", "node2", "node3"]
        assert state["balancer"]["kind"] == kind and state["balancer"]["port"] == port
        assert state["autoscaler"] is None
        assert f"http://127.0.0.1:{port}/" in up.stdout
        # Secrets: owner-only file, never printed.
        secrets_path = state_dir / "secrets.env"
        assert stat.S_IMODE(secrets_path.stat().st_mode) == 0o600
        for line in secrets_path.read_text().splitlines():
            assert line.split("=", 1)[1] not in up.stdout + up.stderr

        # The demo works through the balancer: a guest token, then a stock client.
        base = f"http://127.0.0.1:{port}"
        js = await JsClients().start()
        try:
            await js.open("guest", base, auth={"token": guest_token(base)}, withCredentials=True)
            hello = await js.wait_for(
                lambda m: m.get("type") == "event" and m.get("event") == "server:hello"
            )
            assert hello["args"][0]["node_id"] in {"node1", "node2", "node3"}
        finally:
            await js.stop()

        # A server that drains leaves the balancer's rotation: HAProxy by its /readyz
        # check, nginx through the readiness watcher the fleet runs.
        await drain_server(
            f"http://127.0.0.1:{state['servers'][0]['admin_port']}",
            load_secrets(state_dir)["IOFLEET_ADMIN_TOKEN"],
        )
        await wait_out_of_rotation(state, "node1")

        # `iofleet drain`: out of the balancer for good, out of fleet.json, then it exits.
        drained = await asyncio.to_thread(iofleet, "drain", "node2", "--state-dir", str(state_dir))
        assert drained.returncode == 0, drained.stdout + drained.stderr
        after = json.loads((state_dir / "fleet.json").read_text())
        assert [s["node_id"] for s in after["servers"]] == ["node1", "node3"]
        if kind == "haproxy":
            runtime = HaproxyRuntime(state["balancer"]["admin_socket"])
            states = {s.name: s for s in await runtime.servers_state(state["balancer"]["backend"])}
            assert states["node2"].in_maintenance
        node2 = next(s["pid"] for s in state["servers"] if s["node_id"] == "node2")
        for _ in range(400):
            if not pid_alive(node2):
                break
            await asyncio.sleep(0.1)
        assert not pid_alive(node2)

        again = await asyncio.to_thread(iofleet, "up", "--detach", "--state-dir", str(state_dir))
        assert again.returncode == 1 and "already running" in again.stdout
    finally:
        down = await asyncio.to_thread(iofleet, "down", "--state-dir", str(state_dir))
    assert down.returncode == 0, down.stdout + down.stderr
    assert "leftover" not in down.stdout  # the owner stopped its own children
    assert [pid for pid in pids if pid_alive(pid)] == []
    assert not (state_dir / "fleet.json").exists()
    assert not tcp_answers("127.0.0.1", port)

    nothing = await asyncio.to_thread(iofleet, "down", "--state-dir", str(state_dir))
    assert nothing.returncode == 0 and "no fleet" in nothing.stdout


def test_up_in_the_foreground_stops_everything_on_ctrl_c(tmp_path: Path) -> None:
    state_dir, port = tmp_path / "state", free_port()
    log = (tmp_path / "up.log").open("wb")
    owner = subprocess.Popen(
        [sys.executable, "-m", "iofleet", "up", "--state-dir", str(state_dir), "--port", str(port)],
        stdout=log,
        stderr=subprocess.STDOUT,
        cwd=REPO,
    )
    try:
        deadline = time.monotonic() + 90
        state: dict[str, Any] = {}
        while state.get("status") != "running":
            assert owner.poll() is None, (tmp_path / "up.log").read_text()
            assert time.monotonic() < deadline, "fleet did not start"
            time.sleep(0.2)
            path = state_dir / "fleet.json"
            state = json.loads(path.read_text()) if path.exists() else {}
        assert state["pid"] == owner.pid
        pids = fleet_pids(state)
        owner.send_signal(signal.SIGINT)
        assert owner.wait(60) == 0
        assert [pid for pid in pids if pid_alive(pid)] == []
        assert not (state_dir / "fleet.json").exists()
        assert "fleet stopped" in (tmp_path / "up.log").read_text()
    finally:
        if owner.poll() is None:
            owner.kill()
            owner.wait(10)
        log.close()
        if (state_dir / "fleet.json").exists():
            iofleet("down", "--state-dir", str(state_dir))
