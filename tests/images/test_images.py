"""Both images, built from the lock with podman, run the way the Pulumi program says:
the server under the rendered securityContext against a real Redis, serving the stock JS
client and draining on SIGTERM within the rendered grace period; the autoscaler with
the rendered settings."""

from __future__ import annotations

import json
import re
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.images.podman import (
    REPO,
    Built,
    container_flags,
    env_flags,
    main_pid,
    plain_env,
    podman,
    uid_gid_of,
    wait_exit,
)
from tests.support.jsclient import JsClients
from tests.support.procs import (
    TEST_ADMIN_TOKEN,
    TEST_JWT_SECRET,
    RedisServer,
    ServerProcess,
    free_port,
    http_status,
    make_token,
    wait_until,
)

PIN = re.compile(r"^([A-Za-z0-9_.-]+)==([^\s;\\]+)", re.M)


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def locked_pins() -> set[tuple[str, str]]:
    text = (REPO / "requirements" / "runtime.txt").read_text()
    return {(canonical(n), v) for n, v in PIN.findall(text)}


@pytest.fixture
def container_names() -> Iterator[list[str]]:
    """Names of the containers a test starts; each is removed afterwards."""
    names: list[str] = []
    yield names
    for name in names:
        podman("rm", "--force", "--time", "0", name, check=False)


@pytest.mark.parametrize("image", ["server", "autoscaler"])
def test_image_holds_exactly_the_locked_packages(built: Built, image: str) -> None:
    name = getattr(built, image)
    frozen = podman(
        "run", "--rm", "--network", "none", "--entrypoint", "/opt/venv/bin/pip", name,
        "freeze", "--all", "--disable-pip-version-check",
    ).stdout  # fmt: skip
    # The project itself, from the wheel the build made of this checkout.
    wheel = r"^iofleet @ file:///tmp/wheel/iofleet-0\.1\.0-py3-none-any\.whl$"
    assert re.search(wheel, frozen, re.M), frozen
    installed = {(canonical(n), v) for n, v in PIN.findall(frozen)}
    installed -= {p for p in installed if p[0] in ("pip", "setuptools")}  # the venv's own
    assert installed <= locked_pins(), sorted(installed - locked_pins())
    # The same set the lock gives a Linux install: nothing missing either.
    assert {"aiohttp", "python-socketio", "redis", "pydantic"} <= {n for n, _ in installed}


@pytest.mark.parametrize("image", ["server", "autoscaler"])
def test_image_metadata_keeps_healthcheck_and_non_root_user(built: Built, image: str) -> None:
    inspected = json.loads(podman("image", "inspect", getattr(built, image)).stdout)[0]
    user = inspected["Config"]["User"]
    assert user.split(":")[0] not in ("", "0", "root"), user
    if image == "server":
        # --format docker keeps it (the OCI format has no HEALTHCHECK).
        assert inspected["ManifestType"].startswith("application/vnd.docker"), inspected
        assert "/healthz" in " ".join(inspected["Healthcheck"]["Test"]), inspected


async def test_server_image_serves_drains_and_exits_within_the_grace_period(
    built: Built,
    rendered: dict[str, Any],
    redis_server: RedisServer,
    js: JsClients,
    container_names: list[str],
) -> None:
    pod = rendered["iofleet-server"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    grace = pod["terminationGracePeriodSeconds"]
    port, admin_port = free_port(), free_port()
    name = f"iofleet-server-test-{port}"
    container_names.append(name)
    # The rendered env, with what Kubernetes would fill in (downward API, Secrets) and
    # this machine's loopback ports in place of the pod's own network.
    env = {
        **plain_env(container),
        "IOFLEET_HOST": "127.0.0.1",
        "IOFLEET_PORT": str(port),
        "IOFLEET_ADMIN_PORT": str(admin_port),
        "IOFLEET_NODE_ID": name,
        "IOFLEET_REDIS_URL": redis_server.url,
        "IOFLEET_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
        "IOFLEET_JWT_SECRET": TEST_JWT_SECRET,
    }
    begin = time.monotonic()
    podman(
        # Kubernetes ignores HEALTHCHECK (the rendered probes are what count), and
        # podman's timer for it needs systemd.
        "run", "--detach", "--name", name, "--network", "host", "--health-interval", "disable",
        *container_flags(pod), *env_flags(env),
        "--entrypoint", json.dumps(container["command"]), built.server,
        env=env,
    )  # fmt: skip
    admin = f"http://127.0.0.1:{admin_port}"
    wait_until(lambda: http_status(f"{admin}/readyz") == 200, timeout=60, what="ready")
    start_to_ready = time.monotonic() - begin

    # As rendered: the uid/gid of runAsUser/runAsGroup, a read-only root, a writable /tmp.
    security = {**pod["securityContext"], **container["securityContext"]}
    assert uid_gid_of(main_pid(name)) == (security["runAsUser"], security["runAsGroup"])
    write = "import sys; open(sys.argv[1], 'w').write('x')"
    assert security["readOnlyRootFilesystem"] is True
    denied = podman("exec", name, "python", "-c", write, "/app/probe", check=False)
    assert denied.returncode != 0 and "Read-only file system" in denied.stderr, denied
    assert podman("exec", name, "python", "-c", write, "/tmp/probe", check=False).returncode == 0
    with urllib.request.urlopen(f"{admin}/admin/status", timeout=5) as response:
        assert json.load(response)["redis"] == "up"

    # A stock JS client on the container and one on a host server sharing the Redis:
    # the container's message reaches the other node through Redis.
    host = ServerProcess("host-node", env={"IOFLEET_REDIS_URL": redis_server.url}).start()
    try:
        for client, url in (("in", f"http://127.0.0.1:{port}"), ("out", host.url)):
            await js.open(client, url, auth={"token": make_token(client)}, reconnection=False)
            await js.wait_client(client, "connect")
            assert (await js.call(client, "room:join", {"room": "images"}))["ok"] is True
        await js.emit("in", "chat:message", {"room": "images", "text": "from the image"})
        heard = await js.wait_for(
            lambda m: m.get("client") == "out" and m.get("event") == "chat:message"
        )
        assert heard["args"][0]["text"] == "from the image"
    finally:
        host.stop()

    # SIGTERM, as the kubelet sends it: readiness off at once, the client's transport
    # closed, exit 0 before the grace period ends.
    stopping = time.monotonic()
    podman("kill", "--signal", "TERM", name)
    wait_until(lambda: http_status(f"{admin}/readyz") != 200, timeout=5, what="not ready")
    assert (await js.wait_client("in", "disconnect", timeout=grace))["reason"] == "transport close"
    assert wait_exit(name, within=grace) == 0
    sigterm_to_exit = time.monotonic() - stopping
    assert sigterm_to_exit < grace
    print(f"server image: start-to-ready {start_to_ready:.1f}s, SIGTERM-to-exit "
          f"{sigterm_to_exit:.1f}s (grace {grace}s)")  # fmt: skip


def autoscaler_run(
    built: Built, rendered: dict[str, Any], env: dict[str, str], *args: str
) -> tuple[int, str]:
    """Run the autoscaler image as rendered (securityContext, env) with `args`."""
    pod = rendered["iofleet-autoscaler"]["spec"]["template"]["spec"]
    container = pod["containers"][0]
    run_env = {**plain_env(container), **env}
    command = container["command"]
    result = podman(
        "run", "--rm", "--network", "none", *container_flags(pod), *env_flags(run_env),
        "--entrypoint", json.dumps(command[:3]), built.autoscaler, *(args or command[3:]),
        env=run_env, check=False,
    )  # fmt: skip
    return result.returncode, result.stdout + result.stderr


def test_autoscaler_image_answers_help(built: Built, rendered: dict[str, Any]) -> None:
    code, output = autoscaler_run(built, rendered, {}, "--help")
    assert code == 0 and "--backend {kubernetes,local}" in output, output


def test_autoscaler_image_accepts_the_rendered_settings(
    built: Built, rendered: dict[str, Any], tmp_path: Path
) -> None:
    # The rendered command and env get past the settings to the Kubernetes client,
    # which finds no cluster here: that one line, exit 2.
    code, output = autoscaler_run(built, rendered, {})
    assert code == 2, output
    assert output.strip().splitlines() == [
        line for line in output.strip().splitlines() if line.startswith("autoscaler: no Kubernetes")
    ], output
    # A bad value is refused by the same settings, naming the variable.
    code, output = autoscaler_run(built, rendered, {"IOFLEET_AUTOSCALER_MIN": "many"})
    assert code == 2 and "IOFLEET_AUTOSCALER_MIN" in output, output
    assert len(output.strip().splitlines()) == 1, output
