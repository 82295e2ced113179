"""The local fleet's parts the autoscaler also drives: fleet.json, teardown, settings."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from iofleet.fleet import FleetConfig
from iofleet.fleet_state import (
    AutoscalerRecord,
    BalancerRecord,
    FleetState,
    RedisRecord,
    ServerRecord,
)
from iofleet.processes import free_port
from iofleet.server_settings import balancer_timeouts, settings_from_env
from iofleet.teardown import recorded_pids
from server.contract import DRAIN_DELAY_SECONDS, DRAIN_SECONDS, PING_INTERVAL_SECONDS
from server.settings import SettingsError

REPO = Path(__file__).resolve().parents[2]


def fleet(tmp_path: Path) -> FleetState:
    state = FleetState(pid=1, url="http://127.0.0.1:8080/", secrets="s", logs="l")
    state.redis = RedisRecord(10, 6379)
    state.balancer = BalancerRecord("haproxy", 11, 8080, "cfg", "sock", "iofleet_servers")
    state.add_server(ServerRecord("node1", 12, 8001, 9001))
    state.save(tmp_path)
    return state


def test_fleet_json_round_trip_and_changes(tmp_path: Path) -> None:
    state = fleet(tmp_path)
    assert FleetState.load(tmp_path) == state
    data = json.loads((tmp_path / "fleet.json").read_text())
    assert data["servers"] == [
        {"node_id": "node1", "pid": 12, "port": 8001, "admin_port": 9001, "spare": False}
    ]
    assert data["autoscaler"] is None and data["status"] == "starting"
    assert data["hold"] is None
    # A fleet.json written before `spare` and `hold` existed still loads.
    del data["servers"][0]["spare"], data["hold"]
    assert FleetState.from_json(data) == state

    FleetState.update(tmp_path, lambda s: s.add_server(ServerRecord("node2", 13, 8002, 9002)))
    status = "http://127.0.0.1:9100/status"
    FleetState.update(tmp_path, lambda s: setattr(s, "autoscaler", AutoscalerRecord(14, status)))
    loaded = FleetState.load(tmp_path)
    assert loaded is not None
    assert [s.node_id for s in loaded.servers] == ["node1", "node2"]
    assert loaded.autoscaler == AutoscalerRecord(14, status)
    # The autoscaler first (it would start servers again), Redis last.
    assert recorded_pids(loaded) == [
        (14, "autoscaler"), (11, "haproxy"), (12, "server"), (13, "server"), (10, "redis-server"),
    ]  # fmt: skip

    with pytest.raises(ValueError, match="already"):
        loaded.add_server(ServerRecord("node1", 99, 1, 2))
    with pytest.raises(KeyError):
        loaded.remove_server("node7")
    assert loaded.remove_server("node1").pid == 12
    FleetState.forget(tmp_path)
    assert FleetState.load(tmp_path) is None


def test_concurrent_updates_lose_nothing(tmp_path: Path) -> None:
    """Two writers (the fleet and the autoscaler) through the lock: every change lands."""
    fleet(tmp_path)

    def add(prefix: str) -> None:
        for index in range(25):
            record = ServerRecord(f"{prefix}{index}", index, index, index)
            FleetState.update(tmp_path, lambda s, r=record: s.add_server(r))

    writers = [threading.Thread(target=add, args=(p,)) for p in ("a", "b")]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join(30)
    loaded = FleetState.load(tmp_path)
    assert loaded is not None and len(loaded.servers) == 51


def test_the_fleet_reads_the_servers_settings_model() -> None:
    defaults = settings_from_env({"IOFLEET_AUTH": "none"})
    assert defaults.ping_interval == PING_INTERVAL_SECONDS
    assert balancer_timeouts(defaults).ping_interval_s == PING_INTERVAL_SECONDS
    assert balancer_timeouts(defaults).drain_s >= DRAIN_DELAY_SECONDS + DRAIN_SECONDS
    env = {"IOFLEET_AUTH": "none", "IOFLEET_PING_INTERVAL": "3", "IOFLEET_PING_TIMEOUT": ""}
    timeouts = balancer_timeouts(settings_from_env(env))
    assert (timeouts.ping_interval_s, timeouts.idle_s) == (3, 3 + 20 + 15)
    with pytest.raises(SettingsError, match=r"^invalid setting IOFLEET_PING_INTERVAL: "):
        settings_from_env({"IOFLEET_AUTH": "none", "IOFLEET_PING_INTERVAL": "soon"})


def test_spare_slots_name_the_nodes_to_come() -> None:
    # One surge slot beyond the most servers, for `iofleet restart`.
    assert FleetConfig(servers=2, max_servers=4).spare_slots == ("node3", "node4", "node5")
    assert FleetConfig(servers=3).spare_slots == ("node4",)
    assert FleetConfig(servers=3, surge_slots=0).spare_slots == ()
    # `--spare`: a slot per warm spare beyond the most servers, so one stands ready at max.
    spares = FleetConfig(servers=2, max_servers=4, warm_spares=1).spare_slots
    assert spares == ("node3", "node4", "node5", "node6")


def test_up_refuses_a_bad_setting_before_starting_anything(tmp_path: Path) -> None:
    state_dir = tmp_path / "state"
    result = subprocess.run(
        [sys.executable, "-m", "iofleet", "up", "--state-dir", str(state_dir),
         "--port", str(free_port())],
        capture_output=True, text=True, timeout=60, check=False, cwd=REPO,
        env={"PATH": "/usr/bin:/bin", "IOFLEET_PING_INTERVAL": "soon"},
    )  # fmt: skip
    assert result.returncode == 1
    assert "invalid setting IOFLEET_PING_INTERVAL" in result.stdout
    assert not (state_dir / "fleet.json").exists()
    assert not (state_dir / "logs" / "redis.log").exists()
