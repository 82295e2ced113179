"""`iofleet up` checks its public port before it starts anything: a port in use is one
line and exit 2, with no Redis or server started (it used to start them all, then fail
at the balancer with a traceback)."""

from __future__ import annotations

import os
import socket
import time
from pathlib import Path

import pytest

from iofleet.processes import free_port
from tests.support.procs import run_iofleet


@pytest.mark.parametrize("detach", [True, False])
def test_a_port_in_use_is_one_line_and_exit_2_before_anything_starts(
    tmp_path: Path, detach: bool
) -> None:
    state_dir = tmp_path / "fleet"
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", free_port()))
        holder.listen()
        port = holder.getsockname()[1]
        begin = time.monotonic()
        args = ["up", "--state-dir", str(state_dir), "--port", str(port)]
        result = run_iofleet(*args, *(["--detach"] if detach else []), env=os.environ, within=60)
        took = time.monotonic() - begin
    assert result.returncode == 2, result.stdout + result.stderr
    output = (result.stdout + result.stderr).strip().splitlines()
    assert output == [f"iofleet up: 127.0.0.1:{port} is in use; pick another --port"], output
    assert not (state_dir / "logs").exists()  # no Redis, no server was started
    assert took < 20, took
