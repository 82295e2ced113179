"""`make up IMAGES=1`: the local fleet's servers run from the server image under
podman, behind the same balancer, and `iofleet down` leaves no container behind."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

from iofleet.fleet_secrets import load_secrets
from iofleet.local_servers import SERVER_IMAGE_ENV
from iofleet.processes import free_port, http_status, pid_alive, pid_command
from tests.images.podman import Built, podman, podman_env
from tests.support.jsclient import JsClients
from tests.support.procs import make_token, run_iofleet


async def test_up_runs_the_servers_from_the_image(
    built: Built, tmp_path: Path, js: JsClients
) -> None:
    env = {**podman_env(), SERVER_IMAGE_ENV: built.server}
    state_dir, port = tmp_path / "fleet", free_port()
    up = await asyncio.to_thread(
        run_iofleet, "up", "--detach", "--servers", "2", "--state-dir", str(state_dir),
        "--port", str(port), env=env,
    )  # fmt: skip
    try:
        assert up.returncode == 0, up.stdout + up.stderr
        state = json.loads((state_dir / "fleet.json").read_text())
        assert len(state["servers"]) == 2
        for server in state["servers"]:
            # The recorded PID is `podman run` for this node's container.
            argv = pid_command(server["pid"])
            assert argv[0].endswith("podman") and built.server in argv, argv
            assert http_status(f"http://127.0.0.1:{server['admin_port']}/readyz") == 200
        running = podman("ps", "--format", "{{.Image}} {{.Names}}").stdout
        names = [f"iofleet-{s['node_id']}-{s['port']}" for s in state["servers"]]
        assert all(f"{built.server} {name}" in running for name in names), running

        # A stock client through the balancer, signed with the fleet's own secret.
        secret = load_secrets(state_dir)["IOFLEET_JWT_SECRET"]
        url = f"http://127.0.0.1:{port}"
        await js.open("u", url, auth={"token": make_token("u", secret)}, reconnection=False)
        hello = await js.wait_for(lambda m: m.get("event") == "server:hello", timeout=20)
        assert hello["args"][0]["node_id"] in {s["node_id"] for s in state["servers"]}
        await js.close("u")
    finally:
        down = await asyncio.to_thread(run_iofleet, "down", "--state-dir", str(state_dir), env=env)
    assert down.returncode == 0, down.stdout + down.stderr
    assert not any(pid_alive(s["pid"]) for s in state["servers"])
    left = podman("ps", "--all", "--format", "{{.Names}}").stdout.split()
    assert not set(names) & set(left), left
