"""The hold protocol between `iofleet restart` and the local autoscaler
(`autoscaler.local.hold`), on real fleet.json files and real processes: acknowledged only
when the autoscaler is idle, a stale hold cleared, a second holder refused, and a holder
whose autoscaler never pauses told so in one line with the hold released. The whole
protocol with a real autoscaler is tests/balancer/test_lb_rolling_restart.py."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from autoscaler.local.hold import HoldError, hold_fleet, observe_hold, release_hold
from iofleet.fleet_state import AutoscalerRecord, FleetState, HoldRecord
from iofleet.processes import stop_pid


def _fleet(state_dir: Path, **fields: object) -> None:
    state = FleetState(pid=os.getpid(), url="http://127.0.0.1:1/", secrets="s", logs="l")
    for name, value in fields.items():
        setattr(state, name, value)
    state_dir.mkdir(exist_ok=True)
    state.save(state_dir)


def _hold(state_dir: Path) -> HoldRecord | None:
    state = FleetState.load(state_dir)
    assert state is not None
    return state.hold


@pytest.fixture
def gone_pid() -> int:
    """The PID of a process that has exited."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


@pytest.fixture
def sleeper() -> Iterator[subprocess.Popen[bytes]]:
    """A live process named like the autoscaler: a live holder, or an autoscaler that
    never acknowledges a hold (one stuck in a drain of its own)."""
    code = "import time; time.sleep(60)"
    process = subprocess.Popen([sys.executable, "-c", code, "autoscaler"])
    yield process
    stop_pid(process.pid, grace=5, process=process)


def test_a_hold_is_acknowledged_only_by_an_idle_autoscaler(tmp_path: Path) -> None:
    _fleet(tmp_path, hold=HoldRecord(os.getpid(), "iofleet restart"))
    busy = observe_hold(tmp_path, 4242, idle=False)
    assert busy is not None and busy.acknowledged_by is None
    assert _hold(tmp_path) == busy
    idle = observe_hold(tmp_path, 4242, idle=True)
    assert idle is not None and idle.acknowledged_by == 4242
    assert _hold(tmp_path) == idle
    release_hold(tmp_path, os.getpid())
    assert observe_hold(tmp_path, 4242, idle=True) is None


def test_a_hold_whose_holder_is_gone_is_cleared_in_one_line(
    tmp_path: Path, gone_pid: int, caplog: pytest.LogCaptureFixture
) -> None:
    _fleet(tmp_path, hold=HoldRecord(gone_pid, "iofleet restart", acknowledged_by=4242))
    with caplog.at_level(logging.WARNING, "iofleet.autoscaler.local.hold"):
        assert observe_hold(tmp_path, 4242, idle=True) is None
    assert _hold(tmp_path) is None
    assert [r.getMessage() for r in caplog.records] == [
        f"cleared the hold of pid {gone_pid} (iofleet restart): the holder is gone"
    ]


async def test_a_fleet_without_autoscaler_is_held_at_once_and_released_after(
    tmp_path: Path,
) -> None:
    _fleet(tmp_path)
    with pytest.raises(ZeroDivisionError):
        async with hold_fleet(tmp_path, "iofleet restart", within=1):
            hold = _hold(tmp_path)
            assert hold is not None and hold.pid == os.getpid()
            1 / 0  # noqa: B018 (whatever goes wrong in the body, the hold goes)
    assert _hold(tmp_path) is None


async def test_a_second_holder_is_refused_while_the_first_lives(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    _fleet(tmp_path, hold=HoldRecord(sleeper.pid, "iofleet restart"))
    with pytest.raises(HoldError, match=f"held by pid {sleeper.pid}"):
        async with hold_fleet(tmp_path, "iofleet restart", within=1):
            pass
    assert _hold(tmp_path) == HoldRecord(sleeper.pid, "iofleet restart")


async def test_an_autoscaler_that_never_pauses_fails_the_hold_and_releases_it(
    tmp_path: Path, sleeper: subprocess.Popen[bytes]
) -> None:
    record = AutoscalerRecord(sleeper.pid, "http://127.0.0.1:1/")
    _fleet(tmp_path, autoscaler=record)
    lines: list[str] = []
    with pytest.raises(HoldError, match=r"did not pause within 0\.5s"):
        async with hold_fleet(tmp_path, "iofleet restart", within=0.5, on_wait=lines.append):
            raise AssertionError("the body ran without the autoscaler's acknowledgement")
    assert lines == [f"waiting for the autoscaler (pid {sleeper.pid}) to pause"]
    assert _hold(tmp_path) is None
