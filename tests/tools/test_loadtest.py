"""`iofleet loadtest` end to end against real server processes (and HAProxy)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from iofleet.balancers import LocalBalancer
from iofleet.cli import app
from tests.support.procs import ServerProcess
from tests.tools.conftest import LOAD_ENV

pytestmark = pytest.mark.usefixtures("jwt_env")
EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "loadtest"


def run_cli(args: list[str]) -> dict[str, Any]:
    result = CliRunner().invoke(app, ["loadtest", *args, "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "scenario.yml"
    path.write_text(text)
    return path


CHAT = """
config:
  phases: [{duration: 2, arrivalRate: 20}]
  variables: {room: [a, b, c, d]}
scenarios:
  - flow:
      - connect
      - join: "{{ room }}"
      - loop:
          - emit: {channel: "chat:message", data: {room: "{{ room }}", text: "hi{{ $mark }}"},
                   acknowledge: true}
          - think: 0.3
        count: 5
"""


def test_modest_load_through_the_fleet_has_no_errors(
    tmp_path: Path, fleet: tuple[LocalBalancer, list[ServerProcess]]
) -> None:
    balancer, _ = fleet
    page = tmp_path / "report.html"
    out = run_cli([str(write(tmp_path, CHAT)), "--target", balancer.url, "--html", str(page)])
    summary = out["summary"]
    users = summary["connect_attempts"]
    assert 30 <= users <= 50  # 20/s for 2 s
    assert summary["connects"] == users
    assert summary["errors"] == dict.fromkeys(summary["errors"], 0), summary["error_reasons"]
    assert summary["acked"] == users * 6  # one join + five messages each, all answered
    # Every message reached at least its sender (rooms span both servers through Redis).
    assert summary["delivered"] >= users * 5
    assert summary["delivery_ms"]["count"] == summary["delivered"]
    assert 0 < summary["ack_ms"]["p50"] <= summary["ack_ms"]["p99"] <= summary["ack_ms"]["max"]
    assert out["series"] and max(s["connections"] for s in out["series"]) > 0
    text = page.read_text()
    assert text.count("<svg") == 4 and "<script" not in text and "://cdn" not in text


# Arrivals for 2 s, none for 1.5 s, then arrivals again. The tests stop a server in
# the quiet phase: a connect that lands between reading the server's count and
# stopping it would otherwise be counted "disconnected" without being in the count.
HOLD = """
config:
  phases:
    - {duration: 2, arrivalRate: 20}
    - {duration: 1.5, arrivalRate: 0}
    - {duration: 2, arrivalRate: 20}
  connectTimeout: 3
scenarios:
  - flow:
      - connect
      - join: r
      - loop:
          - emit: {channel: "chat:message", data: {room: r, text: "x{{ $mark }}"},
                   acknowledge: true}
          - think: 0.5
        count: 8
"""


def test_errors_are_counted_by_kind_when_the_server_dies(tmp_path: Path) -> None:
    server = ServerProcess("victim", env=dict(LOAD_ENV)).start()
    try:
        connected: list[int] = []
        killer = threading.Thread(target=_stop_in_the_quiet_phase, args=(server, connected))
        killer.start()
        out = run_cli([str(write(tmp_path, HOLD)), "--target", server.url, "--grace", "2"])
        killer.join()
    finally:
        server.stop()
    errors = out["summary"]["errors"]
    # Everyone connected when the process died saw a disconnect; arrivals after it
    # were refused. Nothing is called lost or rate-limited.
    assert connected[0] > 10
    assert errors["disconnected"] == connected[0], out["summary"]["error_reasons"]
    assert errors["refused"] > 5
    assert errors["rate_limited"] == 0 and errors["lost"] == 0


def _stop_in_the_quiet_phase(server: ServerProcess, connected: list[int]) -> None:
    """Stop `server` 0.6 s into HOLD's quiet phase; record its connections just before.

    The phases are timed from the first connection the server counts (polled every
    20 ms), not from when the CLI was started, whose start-up time varies with load.
    """
    deadline = time.monotonic() + 30
    while _metric(server, "iofleet_connections") == 0:
        if time.monotonic() > deadline:
            raise AssertionError("the load test never connected to the server")
        time.sleep(0.02)
    time.sleep(2.6)
    connected.append(_metric(server, "iofleet_connections"))
    server.stop()


def _metric(server: ServerProcess, name: str) -> int:
    import urllib.request

    with urllib.request.urlopen(f"{server.admin_url}/metrics", timeout=5) as response:
        for line in response.read().decode().splitlines():
            if line.startswith(name + " "):
                return int(float(line.split()[1]))
    raise AssertionError(f"{name} not in /metrics")


BURST = """
config:
  phases: [{duration: 1, arrivalRate: 4}]
scenarios:
  - flow:
      - connect
      - join: burst
      - loop:
          - emit: {channel: "chat:message", data: {room: burst, text: "b{{ $mark }}"},
                   acknowledge: true}
          - think: 0.05
        count: 40
"""


def test_rate_limited_acks_are_counted_and_not_called_lost(tmp_path: Path) -> None:
    server = ServerProcess("limited", env={"IOFLEET_RATE_LIMIT": "5"}).start()
    try:
        out = run_cli([str(write(tmp_path, BURST)), "--target", server.url])
    finally:
        server.stop()
    errors = out["summary"]["errors"]
    # 40 messages in 2 s against a bucket of 10 refilled at 5/s: about half are refused,
    # interleaved with accepted ones, so receivers see gaps the refusals explain.
    assert errors["rate_limited"] > 30
    assert out["summary"]["delivered"] > 30
    assert errors["lost"] == 0  # refused messages were never sent to the room
    assert errors["disconnected"] == errors["refused"] == errors["timeout"] == 0


HOLD_FOREVER = """
config:
  phases: [{duration: 1, arrivalRate: 1}]
scenarios:
  - flow:
      - connect
      - join: "cap-{{ $randomNumber(1, 5) }}"
"""


def test_find_capacity_finds_the_knee_of_a_limited_server(tmp_path: Path) -> None:
    server = ServerProcess("small", env={**LOAD_ENV, "IOFLEET_MAX_CONNECTIONS": "120"}).start()
    capacity = tmp_path / "capacity.json"
    try:
        args = [str(write(tmp_path, HOLD_FOREVER)), "--target", server.url, "--find-capacity"]
        args += ["--start", "40", "--step", "40", "--max-users", "400", "--step-seconds", "1"]
        args += ["--ramp-rate", "200", "--metrics", f"{server.admin_url}/metrics"]
        # Loose latency objectives: on a busy test machine the knee must be the cap.
        args += ["--slo-connect-ms", "2000", "--slo-message-p99-ms", "2000"]
        args += ["--slo-loop-lag-ms", "500", "--capacity-file", str(capacity)]
        out = run_cli(args)
    finally:
        server.stop()
    levels = out["levels"]
    assert [level["users"] for level in levels] == [40, 80, 120, 160]
    assert [level["held"] for level in levels] == [True, True, True, False]
    assert levels[-1]["errors"].get("refused", 0) > 0
    assert all(level["loop_lag_ms"] is not None for level in levels)  # read from /metrics
    assert levels[2]["server_connections"] == 120
    assert out["connections_per_server"] == 120
    written = json.loads(capacity.read_text())
    assert written["connections_per_server"] == 120
    planned = CliRunner().invoke(
        app, ["plan", "--connections", "840", "--capacity", str(capacity), "--json"]
    )
    assert json.loads(planned.stdout)["plan"]["regions"][0]["target_connections"] == 84


def test_workers_share_the_arrivals(tmp_path: Path) -> None:
    server = ServerProcess("shared", env=dict(LOAD_ENV)).start()
    try:
        out = run_cli([str(write(tmp_path, CHAT)), "--target", server.url, "--workers", "2"])
    finally:
        server.stop()
    summary = out["summary"]
    assert 30 <= summary["connects"] <= 50  # 20/s for 2 s, split over two processes
    assert summary["connects"] == summary["connect_attempts"]
    assert sum(summary["errors"].values()) == 0
    assert summary["acked"] == summary["connects"] * 6


@pytest.mark.parametrize("name", ["chat-rooms", "broadcast-room", "connection-storm", "capacity"])
def test_bundled_scenarios_run_clean_when_shrunk(name: str) -> None:
    """Each bundled scenario, cut to a couple of seconds and a few users, speaks the
    server's contract: every connect, join and message is accepted."""
    from iofleet.loadtest.engine import Auth, Engine
    from iofleet.loadtest.scenario import load_scenario
    from iofleet.loadtest.stats import Totals
    from tests.support.procs import TEST_JWT_SECRET

    scenario = load_scenario(EXAMPLES / f"{name}.yml")
    for phase in scenario.config.phases:
        phase.duration = min(phase.duration, 1.0)
        phase.arrival_rate = min(phase.arrival_rate, 15)
        phase.ramp_to = None
    if name == "capacity":
        scenario.config.phases[0].arrival_rate = 15
    server = ServerProcess(name, env=dict(LOAD_ENV)).start()
    totals = Totals()
    try:
        engine = Engine(scenario, server.url, Auth(jwt_secret=TEST_JWT_SECRET), seed=1, grace=1)
        asyncio.run(engine.run(totals.add))
    finally:
        server.stop()
    summary = totals.summary()
    assert summary["connects"] > 3 and summary["acked"] >= summary["connects"]
    assert sum(summary["errors"].values()) == 0, summary["error_reasons"]
    assert not [r for r in summary["error_reasons"] if r.startswith("rejected")]


RECONNECT = """
config:
  phases: [{duration: 1, arrivalRate: 10}]
scenarios:
  - flow:
      - connect
      - join: t
      - loop:
          - think: 0.2
          - disconnect
          - connect
          - join: t
          - emit: {channel: "chat:message", data: {room: t, text: "back{{ $mark }}"},
                   acknowledge: true}
        count: 3
"""


def test_users_disconnect_and_reconnect_on_purpose_without_errors(tmp_path: Path) -> None:
    server = ServerProcess("again", env=dict(LOAD_ENV)).start()
    try:
        out = run_cli([str(write(tmp_path, RECONNECT)), "--target", server.url])
    finally:
        server.stop()
    summary = out["summary"]
    users = summary["connect_attempts"] // 4
    assert users >= 5
    assert summary["connects"] == summary["connect_attempts"] == users * 4
    assert summary["acked"] == users * 7  # four joins and three messages each
    assert sum(summary["errors"].values()) == 0, summary["error_reasons"]


WORK = """
config:
  phases: [{duration: 1, arrivalRate: 1}]
scenarios:
  - flow:
      - connect
      - loop:
          - emit: {channel: work, data: {}, acknowledge: true}
          - think: 0.5
"""


def test_find_capacity_finds_the_knee_of_a_cpu_bound_server(tmp_path: Path) -> None:
    # Each `work` event holds the loop for 20 ms and each user sends two a second, so
    # about 25 users fill the core (on an idle machine); message latency and loop lag
    # then climb, and the knee is where they cross the objective.
    env = {**LOAD_ENV, "IOFLEET_HANDLERS": "tests.tools.cpu_handlers:register"}
    server = ServerProcess("cpu", env=env).start()
    capacity = tmp_path / "capacity.json"
    try:
        assert server.process is not None
        args = [str(write(tmp_path, WORK)), "--target", server.url, "--find-capacity"]
        args += ["--start", "4", "--step", "8", "--max-users", "80", "--step-seconds", "2"]
        args += ["--metrics", f"{server.admin_url}/metrics", "--server-pid"]
        args += [str(server.process.pid), "--capacity-file", str(capacity)]
        args += ["--slo-message-p99-ms", "150", "--slo-loop-lag-ms", "100"]
        args += ["--slo-connect-ms", "2000"]
        out = run_cli(args)
    finally:
        server.stop()
    levels = out["levels"]
    assert levels[0]["held"] and not levels[-1]["held"], levels
    assert levels[-1]["users"] < 80  # it broke before the top of the ramp
    assert any("message p99" in b or "lag" in b for b in levels[-1]["broke"]), levels[-1]
    assert 4 <= out["connections_per_server"] < 40
    print([(lv["users"], lv["message_p99_ms"], lv["loop_lag_ms"], lv["broke"]) for lv in levels])
    assert out["memory_per_connection_mb"] >= 0 and out["base_memory_mb"] > 10


def test_a_fleet_server_stopped_mid_run_costs_its_connections_only(
    tmp_path: Path, fleet: tuple[LocalBalancer, list[ServerProcess]]
) -> None:
    balancer, servers = fleet
    victim = servers[0]
    connected: list[int] = []
    killer = threading.Thread(target=_stop_in_the_quiet_phase, args=(victim, connected))
    killer.start()
    try:
        out = run_cli([str(write(tmp_path, HOLD)), "--target", balancer.url, "--grace", "3"])
    finally:
        killer.join()
    summary = out["summary"]
    errors = summary["errors"]
    # Exactly the users on the stopped server were cut off; the balancer sent the
    # later arrivals to the server left, so most connects after the kill succeeded.
    assert connected[0] > 5
    assert errors["disconnected"] == connected[0]
    # Second 2 ends 0.4 s after the kill, in the quiet phase: the survivor's users only.
    # Arrivals from 3.5 s on must add to them (the balancer sends them to the survivor).
    series = out["series"]
    after_kill = next(s["connections"] for s in series if s["second"] == 2)
    assert max(s["connections"] for s in series if s["second"] >= 4) > after_kill, series
    assert (
        summary["connects"] >= summary["connect_attempts"] - errors["refused"] - errors["timeout"]
    )
    assert errors["rate_limited"] == 0 and errors["lost"] == 0


IMPLICIT = """
config:
  phases: [{duration: 1, arrivalRate: 5}]
scenarios:
  - flow:
      - join: solo
      - emit: {channel: "chat:message", data: {room: solo, text: "x"}, acknowledge: true}
"""


def test_a_flow_without_connect_connects_with_the_defaults(tmp_path: Path) -> None:
    server = ServerProcess("implicit", env=dict(LOAD_ENV)).start()
    try:
        out = run_cli([str(write(tmp_path, IMPLICIT)), "--target", server.url])
    finally:
        server.stop()
    summary = out["summary"]
    assert summary["connects"] == summary["connect_attempts"] >= 3
    assert summary["acked"] == 2 * summary["connects"]
    assert sum(summary["errors"].values()) == 0


GUEST = """
config:
  phases: [{duration: 1, arrivalRate: 4}]
scenarios:
  - flow:
      - connect: {auth: guest}
      - join: lobby
"""


def test_guest_tokens_come_from_the_server(tmp_path: Path) -> None:
    # Guest tokens are rate-limited per address (10 a minute by default): a few users.
    server = ServerProcess("guests", env={**LOAD_ENV, "IOFLEET_GUEST_TOKENS": "true"}).start()
    try:
        out = run_cli([str(write(tmp_path, GUEST)), "--target", server.url])
    finally:
        server.stop()
    summary = out["summary"]
    assert 2 <= summary["connects"] == summary["connect_attempts"] <= 6
    assert summary["acked"] == summary["connects"]
    assert sum(summary["errors"].values()) == 0, summary["error_reasons"]
