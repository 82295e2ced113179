"""`iofleet loadtest` settles what it needs before the first connect: a scenario that
signs tokens without a secret is one line and exit 2 at once; against a local fleet the
secret comes from that fleet's state directory (`--fleet DIR`, or the default one when
the target is its URL)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import DEFAULT_STATE_DIR, FleetState
from iofleet.loadtest.scenario import Scenario
from tests.support.metrics import metric_or_zero
from tests.support.procs import REPO, ServerProcess

EXAMPLE = REPO / "examples" / "loadtest" / "broadcast-room.yml"
SHORT = """
config:
  phases: [{duration: 1, arrivalRate: 5}]
scenarios:
  - flow:
      - connect
      - join: lobby
"""


def env_without_secret() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k != "IOFLEET_JWT_SECRET"}


def loadtest(cwd: Path, *args: str, within: float = 30) -> tuple[int, str, str, float]:
    """`python -m iofleet loadtest ARGS` run from `cwd` (where the default state dir is)."""
    begin = time.monotonic()
    result = subprocess.run(
        [sys.executable, "-m", "iofleet", "loadtest", *args],
        capture_output=True,
        text=True,
        timeout=within,
        cwd=cwd,
        env={**env_without_secret(), "PYTHONPATH": str(REPO)},
        check=False,
    )
    return result.returncode, result.stdout, result.stderr, time.monotonic() - begin


@pytest.fixture
def fleet_secret(tmp_path: Path) -> str:
    """A fleet state directory under tmp_path, with the secrets `iofleet up` makes."""
    return load_secrets(tmp_path / DEFAULT_STATE_DIR)["IOFLEET_JWT_SECRET"]


@pytest.fixture
def server(fleet_secret: str) -> Iterator[ServerProcess]:
    """A real server that accepts the fleet's tokens (and no other)."""
    node = ServerProcess("n1", env={"IOFLEET_JWT_SECRET": fleet_secret}).start()
    yield node
    node.stop()


def test_no_secret_is_one_line_and_exit_2_before_any_connect(
    tmp_path: Path, server: ServerProcess
) -> None:
    # The fleet's directory exists, but the target is not that fleet: no secret to use.
    code, out, err, took = loadtest(tmp_path, str(EXAMPLE), "--target", server.url)
    assert code == 2, out + err
    assert err.strip().splitlines() == [
        "iofleet loadtest: auth: signed needs a JWT secret: set $IOFLEET_JWT_SECRET"
        " (--jwt-secret-env), or pass --fleet DIR for a local fleet (none in .iofleet"
        f" serves {server.url})"
    ], err
    assert took < 15, took  # the scenario is 60 s long
    assert metric_or_zero(server.admin_url, "iofleet_connections_total") == 0


def test_fleet_dir_supplies_the_secret(tmp_path: Path, server: ServerProcess) -> None:
    scenario = tmp_path / "short.yml"
    scenario.write_text(SHORT)
    fleet = tmp_path / DEFAULT_STATE_DIR
    code, out, err, _ = loadtest(
        tmp_path / "..", str(scenario), "--target", server.url, "--fleet", str(fleet), "--json"
    )
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["connects"] >= 3 and sum(summary["errors"].values()) == 0, summary


def test_the_default_fleet_dir_is_used_when_the_target_is_that_fleet(
    tmp_path: Path, server: ServerProcess
) -> None:
    scenario = tmp_path / "short.yml"
    scenario.write_text(SHORT)
    FleetState(pid=os.getpid(), url=f"{server.url}/", secrets="secrets.env", logs="logs").save(
        tmp_path / DEFAULT_STATE_DIR
    )
    code, out, err, _ = loadtest(tmp_path, str(scenario), "--target", server.url, "--json")
    assert code == 0, err
    summary = json.loads(out)["summary"]
    assert summary["connects"] >= 3 and sum(summary["errors"].values()) == 0, summary


def test_a_fleet_dir_without_secrets_is_one_line_and_exit_2(tmp_path: Path) -> None:
    empty = tmp_path / "not-a-fleet"
    code, out, err, _ = loadtest(tmp_path, str(EXAMPLE), "--fleet", str(empty))
    assert code == 2, out + err
    assert len(err.strip().splitlines()) == 1 and "--fleet" in err and "Traceback" not in err
    assert not empty.exists()  # looking made nothing


def test_a_guest_scenario_needs_no_secret(tmp_path: Path) -> None:
    # Nothing listens on the target: the run is attempted (and fails to connect) rather
    # than refused for a secret it does not need.
    scenario = tmp_path / "guest.yml"
    scenario.write_text(SHORT.replace("- connect\n", "- connect: {auth: guest}\n"))
    _, out, err, _ = loadtest(
        tmp_path, str(scenario), "--target", "http://127.0.0.1:9", "--json", "--grace", "0"
    )
    assert "JWT secret" not in err, err
    assert json.loads(out)["summary"]["connects"] == 0


@pytest.mark.parametrize(
    ("flow", "modes"),
    [
        ("[connect]", {"signed"}),
        ("[{connect: {auth: guest}}, {join: a}]", {"guest"}),
        ("[{join: a}]", {"signed"}),  # an emit or join with no connection connects
        ("[{connect: {auth: none}}, disconnect, {join: a}]", {"none", "signed"}),
        (
            "[{connect: {auth: guest}}, {loop: [{join: a}, disconnect], count: 2}]",
            {"guest", "signed"},
        ),
        ("[{loop: [{connect: {auth: guest}}, {join: a}], count: 3}]", {"guest"}),
    ],
)
def test_auth_modes_include_the_engines_implicit_connect(flow: str, modes: set[str]) -> None:
    from ruamel.yaml import YAML

    raw = YAML(typ="safe").load(
        f"config: {{phases: [{{duration: 1}}]}}\nscenarios: [{{flow: {flow}}}]"
    )
    assert Scenario.model_validate(raw).auth_modes() == modes
