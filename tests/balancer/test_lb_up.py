"""`iofleet up` / `iofleet down` as a user runs them: real processes, nothing left behind."""

from __future__ import annotations

import asyncio
import json
import signal
import stat
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from iofleet.fleet import load_secrets
from iofleet.levers import HaproxyRuntime, drain_server
from iofleet.processes import free_port, pid_alive, tcp_answers
from tests.support.jsclient import JsClients

REPO = Path(__file__).resolve().parents[2]


def iofleet(*args: str, within: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iofleet", *args],
        capture_output=True,
        text=True,
        timeout=within,
        cwd=REPO,
        check=False,
    )


def fleet_pids(state: dict[str, Any]) -> list[int]:
    pids = [state["pid"], state["balancer"]["pid"], state["redis"]["pid"]]
    return pids + [s["pid"] for s in state["servers"]]


def guest_token(base: str) -> str:
    request = urllib.request.Request(f"{base}/auth/guest", method="POST")
    with urllib.request.urlopen(request, timeout=5) as response:
        token: str = json.loads(response.read())["token"]
        return token


async def wait_out_of_rotation(state: dict[str, Any], node: str, within: float = 15) -> None:
    balancer = state["balancer"]
    for _ in range(int(within * 10)):
        if balancer["kind"] == "haproxy":
            runtime = HaproxyRuntime(balancer["admin_socket"])
            states = {s.name: s for s in await runtime.servers_state(balancer["backend"])}
            if not states[node].up:
                return
        else:
            port = next(s["port"] for s in state["servers"] if s["node_id"] == node)
            config = await asyncio.to_thread(Path(balancer["config"]).read_text)
            if f"127.0.0.1:{port} max_fails=1 fail_timeout=10s down;" in config:
                return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"{node} still in rotation after {within}s")


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
