"""Start the local fleet's processes: redis-server and `python -m server` nodes.

`start_server(ServerSpec(...), ...)` is what `iofleet up` and the autoscaler's local
backend call to add a node; each process gets its own log file and session, and is
stopped by its PID (`iofleet.processes.stop_pid`).
"""

from __future__ import annotations

import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

from iofleet.fleet_state import RedisRecord, ServerRecord
from iofleet.processes import free_port, http_status, redis_answers, spawn, stop_pid, wait_until
from iofleet.render import Backend

HOST = "127.0.0.1"
SERVER_IMAGE_ENV = "IOFLEET_SERVER_IMAGE"
"""Set (`make up IMAGES=1`): each server runs from this image under podman instead of
`python -m server` (the autoscaler's local backend inherits it with the environment)."""


@dataclass(frozen=True)
class ServerSpec:
    """One server node to start on this machine."""

    node_id: str
    redis_url: str | None
    port: int
    admin_port: int
    host: str = HOST

    @classmethod
    def on_free_ports(cls, node_id: str, redis_url: str | None) -> ServerSpec:
        return cls(node_id, redis_url, free_port(), free_port())

    @property
    def admin_url(self) -> str:
        return f"http://{self.host}:{self.admin_port}"

    @property
    def backend(self) -> Backend:
        """How a balancer reaches it (the name is the node id: nginx's sid map needs that)."""
        return Backend(self.node_id, self.host, self.port, self.admin_port)

    def env(self, base: Mapping[str, str]) -> dict[str, str]:
        """`base` (inherited settings and the fleet's secrets) plus what this node needs."""
        env = {
            **base,
            "IOFLEET_HOST": self.host,
            "IOFLEET_PORT": str(self.port),
            "IOFLEET_ADMIN_PORT": str(self.admin_port),
            "IOFLEET_NODE_ID": self.node_id,
            # The demo page gets its token from POST /auth/guest.
            "IOFLEET_GUEST_TOKENS": "true",
            # Our balancer sets X-Forwarded-For; the servers see only it.
            "IOFLEET_TRUST_PROXY_HEADERS": "true",
        }
        if self.redis_url:
            env["IOFLEET_REDIS_URL"] = self.redis_url
        return env


@dataclass
class LocalServer:
    """A server process this machine started."""

    spec: ServerSpec
    process: subprocess.Popen[bytes]
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def record(self) -> ServerRecord:
        return ServerRecord(self.spec.node_id, self.pid, self.spec.port, self.spec.admin_port)

    def ready(self) -> bool:
        return http_status(f"{self.spec.admin_url}/readyz") == 200

    def wait_ready(self, within: float = 30) -> None:
        """Until /readyz answers 200; StartError (with the log's tail) if it exits first."""
        wait_until(self.ready, within, f"server {self.spec.node_id}", self.process, self.log_path)

    def stop(self, grace: float = 10) -> None:
        """SIGINT stops a server at once (no drain): drain it first if it has clients."""
        stop_pid(self.pid, grace=grace, first=signal.SIGINT, process=self.process)


def start_server(spec: ServerSpec, base_env: Mapping[str, str], log_dir: Path) -> LocalServer:
    """Start `python -m server` for `spec`; returns at once (call `wait_ready`)."""
    log_path = log_dir / f"{spec.node_id}.log"
    env = spec.env(base_env)
    image = env.get(SERVER_IMAGE_ENV)
    argv = container_command(spec, env, image) if image else [sys.executable, "-m", "server"]
    process = spawn(argv, log_path, env=env)
    return LocalServer(spec, process, log_path)


def container_command(spec: ServerSpec, env: Mapping[str, str], image: str) -> list[str]:
    """`podman run` in the foreground: its PID stands for the server's (podman passes
    SIGINT/SIGTERM on to it, and --rm removes the container once it exits). The host's
    network, so ports and the balancer are as for a process; a read-only root, no
    capabilities, the image's non-root user, like the Deployment."""
    settings = sorted(k for k in env if k.startswith("IOFLEET_") and k != SERVER_IMAGE_ENV)
    return [
        "podman", "run", "--rm", "--name", f"iofleet-{spec.node_id}-{spec.port}",
        "--network", "host", "--read-only", "--read-only-tmpfs=false",
        "--tmpfs", "/tmp:rw,size=64m,mode=1777", "--cap-drop", "ALL",
        "--security-opt", "no-new-privileges", "--health-interval", "disable",
        # `-e NAME`: the value comes from podman's environment, never the command line.
        *[arg for name in settings for arg in ("-e", name)],
        image,
    ]  # fmt: skip


@dataclass
class LocalRedis:
    port: int
    process: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis://{HOST}:{self.port}/0"

    @property
    def record(self) -> RedisRecord:
        return RedisRecord(self.process.pid, self.port)

    def stop(self) -> None:
        stop_pid(self.process.pid, process=self.process)


def redis_command(port: int, host: str = HOST) -> list[str]:
    """A throwaway redis-server: loopback only, nothing written to disk."""
    return [
        "redis-server", "--bind", host, "--port", str(port),
        "--save", "", "--appendonly", "no", "--protected-mode", "yes",
    ]  # fmt: skip


def start_redis(log_path: Path, within: float = 15) -> LocalRedis:
    port = free_port()
    redis = LocalRedis(port, spawn(redis_command(port), log_path))
    try:
        wait_until(lambda: redis_answers(port), within, "redis-server", redis.process, log_path)
    except BaseException:
        redis.stop()
        raise
    return redis
