"""`iofleet up --regions 2` as a user runs it: two whole local fleets (Redis,
servers, HAProxy each), relays and delay proxies; a room spans them through the
balancers; `iofleet down` leaves nothing behind."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from iofleet.fleet_secrets import load_secrets
from iofleet.processes import free_port, pid_alive
from tests.regions.conftest import get_json
from tests.support.procs import make_token, run_iofleet, wait_until


async def test_up_regions_joins_two_fleets_and_down_stops_them(
    tmp_path: Path, py_clients: Any
) -> None:
    port = free_port()
    while free_port() == port + 1:  # the second region's balancer takes port + 1
        port = free_port()
    env = {**os.environ, "IOFLEET_HANDLERS": "server.apps.chat:register"}
    args = ["--regions", "2", "--servers", "1", "--port", str(port), "--state-dir", str(tmp_path)]
    started = run_iofleet("up", *args, "--detach", env=env, within=240)
    assert started.returncode == 0, started.stdout + started.stderr
    recorded = json.loads((tmp_path / "regions.json").read_text())
    pids = [r["pid"] for r in recorded["relays"]] + [link["pid"] for link in recorded["links"]]
    for region in ("r1", "r2"):
        state = json.loads((tmp_path / region / "fleet.json").read_text())
        pids += [state["pid"], state["redis"]["pid"], state["balancer"]["pid"]]
        pids += [s["pid"] for s in state["servers"]]
    try:
        assert len(recorded["relays"]) == 2 and len(recorded["links"]) == 2
        for relay in recorded["relays"]:
            wait_until(
                lambda r=relay: all(
                    link["state"] == "up"
                    for link in get_json(f"{r['admin_url']}/admin/status")["links"]
                ),
                what=f"relay {relay['region']} linked",
            )
        secret = load_secrets(tmp_path)["IOFLEET_JWT_SECRET"]
        for region in ("r1", "r2"):
            assert load_secrets(tmp_path / region)["IOFLEET_JWT_SECRET"] == secret
        alice = await py_clients(f"http://127.0.0.1:{port}", token=make_token("alice", secret))
        bob = await py_clients(f"http://127.0.0.1:{port + 1}", token=make_token("bob", secret))
        for client in (alice, bob):
            assert (await client.sio.call("room:join", {"room": "global"}))["ok"]
        r1 = recorded["relays"][0]["admin_url"]
        wait_until(
            lambda: get_json(f"{r1}/admin/status")["links"][0]["far_rooms"] == 1,
            what="r1 knows r2's room",
        )
        assert (await alice.sio.call("chat:message", {"room": "global", "text": "hi"}))["ok"]
        await bob.wait(lambda: bob.received("chat:message"))
        assert [m["text"] for m in bob.received("chat:message")] == ["hi"]
    finally:
        stopped = run_iofleet("down", "--state-dir", str(tmp_path), env=env, within=120)
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    wait_until(lambda: not any(pid_alive(pid) for pid in pids), timeout=30, what="all stopped")
