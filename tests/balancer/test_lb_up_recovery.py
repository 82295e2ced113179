"""`iofleet up` turns connection state recovery on unless asked not to: a stock JS
client through the fleet's balancer gets a recovery session (`pid`) by default, and
none with `--no-recovery` or `IOFLEET_RECOVERY=false`; the choice is recorded for
`iofleet restart`."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from iofleet.fleet_secrets import load_secrets
from iofleet.processes import free_port
from tests.support.jsclient import JsClients
from tests.support.procs import make_token, run_iofleet

CASES = [
    pytest.param([], {}, True, id="default-on"),
    pytest.param(["--no-recovery"], {}, False, id="no-recovery-flag"),
    pytest.param([], {"IOFLEET_RECOVERY": "false"}, False, id="env-false"),
]


@pytest.mark.parametrize(("flags", "extra_env", "recovery"), CASES)
async def test_up_starts_servers_with_recovery_unless_asked(
    tmp_path: Path, flags: list[str], extra_env: dict[str, str], recovery: bool
) -> None:
    state_dir, port = tmp_path / "state", free_port()
    env = {**os.environ, **extra_env}
    up = run_iofleet(
        "up", "--detach", "--state-dir", str(state_dir), "--port", str(port), *flags, env=env
    )
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        recorded = json.loads((state_dir / "servers.json").read_text())
        assert recorded["IOFLEET_RECOVERY"] == ("true" if recovery else "false")
        assert (state_dir / "servers.json").stat().st_mode & 0o077 == 0
        secret = load_secrets(state_dir)["IOFLEET_JWT_SECRET"]
        js = await JsClients().start()
        try:
            token = make_token("u1", secret=secret)
            await js.open("c", f"http://127.0.0.1:{port}", auth={"token": token})
            await js.wait_client("c", "connect", timeout=15)
            session = await js.session("c")
            # The CONNECT answer carries a pid only when the server offers recovery.
            assert (session["pid"] is not None) is recovery, session
        finally:
            await js.stop()
    finally:
        down = run_iofleet("down", "--state-dir", str(state_dir), env=env)
        assert down.returncode == 0, down.stdout + down.stderr
