"""The images under podman, run the way the Pulumi program's Deployments say.

`build_images` runs infra/docker/build-images (what `make images` runs), so the tests
build exactly what a user builds. `container_flags` turns a rendered pod spec's
securityContext and volumes into `podman run` options; it refuses a field it does not
know, so a new field in infra/workloads.py must be mapped here before the test passes.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]
BUILD = REPO / "infra" / "docker" / "build-images"
CONTAINERS_CONF = REPO / "infra" / "docker" / "containers.conf"
RENDER = Path(__file__).with_name("render_workloads.py")


def podman_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    return {**os.environ, "CONTAINERS_CONF": str(CONTAINERS_CONF), **(extra or {})}


def podman(
    *args: str, env: Mapping[str, str] | None = None, within: float = 60, check: bool = True
) -> subprocess.CompletedProcess[str]:
    """`podman ARGS`; `env` is what `-e NAME` options take their values from."""
    return subprocess.run(
        ["podman", *args],
        capture_output=True,
        text=True,
        timeout=within,
        check=check,
        env=podman_env(env),
    )


@dataclass(frozen=True)
class Built:
    server: str
    autoscaler: str
    timings: dict[str, int]
    """Step -> milliseconds, as build-images reported them."""


def build_images(tag: str = "test") -> Built:
    """Both images from the lock (base image reused when this machine has it)."""
    result = subprocess.run(
        [str(BUILD), "--tag", tag],
        capture_output=True,
        text=True,
        timeout=1500,
        check=False,
        env=podman_env(),
        cwd=REPO,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    server, autoscaler = result.stdout.split()
    timings = {
        m.group(1): int(m.group(2)) for m in re.finditer(r"^(.*) (\d+)ms$", result.stderr, re.M)
    }
    return Built(server, autoscaler, timings)


def render_deployments(stack: str = "dev") -> dict[str, Any]:
    """{Deployment name: manifest} as infra/workloads.py renders them for `stack`."""
    python = REPO / ".venv" / "bin" / "python"
    result = subprocess.run(
        [str(python), str(RENDER), stack],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
        cwd=REPO,
    )
    assert result.returncode == 0, result.stderr
    rendered: dict[str, Any] = json.loads(result.stdout)
    return rendered


def container_flags(pod_spec: Mapping[str, Any]) -> list[str]:
    """`podman run` options for the first container of `pod_spec`: its user, privileges,
    root filesystem and emptyDir volumes (Secret volumes are the test's to mount)."""
    container = pod_spec["containers"][0]
    context = {**pod_spec.get("securityContext", {}), **container.get("securityContext", {})}
    flags: list[str] = []
    for key, value in context.items():
        if key == "runAsUser":
            flags += ["--user", f"{value}:{context.get('runAsGroup', value)}"]
        elif key == "runAsNonRoot":
            assert value is True and context.get("runAsUser", 0) != 0, context
        elif key == "allowPrivilegeEscalation" and value is False:
            flags += ["--security-opt", "no-new-privileges"]
        elif key == "readOnlyRootFilesystem" and value is True:
            # Podman's --read-only adds tmpfs at /tmp, /run, /var/tmp by itself; the pod
            # gets only the volumes it declares.
            flags += ["--read-only", "--read-only-tmpfs=false"]
        elif key == "capabilities":
            flags += [f"--cap-drop={cap}" for cap in value.get("drop", [])]
            flags += [f"--cap-add={cap}" for cap in value.get("add", [])]
        elif key == "seccompProfile":
            assert value == {"type": "RuntimeDefault"}, value  # podman's default profile
        elif key == "fsGroup":
            flags += ["--group-add", str(value)]
        elif key != "runAsGroup":
            raise AssertionError(f"securityContext.{key} has no podman mapping here")
    volumes = {v["name"]: v for v in pod_spec.get("volumes", [])}
    for mount in container.get("volumeMounts", []):
        volume = volumes[mount["name"]]
        if "emptyDir" in volume:
            size = volume["emptyDir"].get("sizeLimit", "64Mi").replace("Mi", "m")
            flags += ["--tmpfs", f"{mount['mountPath']}:rw,size={size},mode=1777"]
    return flags


def plain_env(container: Mapping[str, Any]) -> dict[str, str]:
    """The container's literal env values (valueFrom ones are the test's to supply)."""
    return {e["name"]: str(e["value"]) for e in container.get("env", []) if "value" in e}


def env_flags(env: Mapping[str, str]) -> list[str]:
    """`-e NAME` only: podman takes the value from its own environment, so secrets
    never appear on a command line."""
    return [flag for name in env for flag in ("-e", name)]


def main_pid(name: str) -> int:
    return int(podman("inspect", "--format", "{{.State.Pid}}", name).stdout)


def uid_gid_of(pid: int) -> tuple[int, int]:
    """Effective uid and gid of a host process (a container's main process)."""
    status = Path(f"/proc/{pid}/status").read_text()
    uid = re.search(r"^Uid:\s+\d+\s+(\d+)", status, re.M)
    gid = re.search(r"^Gid:\s+\d+\s+(\d+)", status, re.M)
    assert uid and gid, status
    return int(uid.group(1)), int(gid.group(1))


def wait_exit(name: str, within: float) -> int:
    """The container's exit code once it has stopped, at most `within` seconds on."""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = podman("inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", name)
        status, code = state.stdout.split()
        if status in ("exited", "stopped"):
            return int(code)
        time.sleep(0.1)
    raise TimeoutError(f"container {name} still running after {within}s")
