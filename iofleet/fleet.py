"""The local fleet: Redis, N servers and a sticky balancer on this machine (`iofleet up`).

What runs is recorded in `<state dir>/fleet.json` so `iofleet down` (another
process) can stop it by PID. Secrets (JWT secret, admin token) are generated into
`<state dir>/secrets.env` (mode 0600) and never printed.
"""

from __future__ import annotations

import functools
import json
import os
import secrets
import signal
import subprocess
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iofleet.balancers import BalancerKind, LocalBalancer, start_balancer
from iofleet.processes import (
    free_port,
    http_status,
    pid_alive,
    pid_command,
    redis_answers,
    spawn,
    stop_pid,
    wait_until,
)
from iofleet.render import Backend, Timeouts

REPO = Path(__file__).resolve().parents[1]
FLEET_FILE = "fleet.json"
SECRETS_FILE = "secrets.env"
HOST = "127.0.0.1"


@dataclass(frozen=True)
class FleetConfig:
    """What `iofleet up` starts."""

    servers: int = 3
    balancer: BalancerKind = "haproxy"
    port: int = 8080
    """Public port of the balancer on 127.0.0.1."""
    state_dir: Path = Path(".iofleet")
    stickiness: str | None = None
    """Balancer stickiness; None = the template default (cookie / sid)."""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """Environment the servers inherit their `IOFLEET_` settings from."""


@dataclass
class Child:
    """A process this fleet started."""

    role: str
    process: subprocess.Popen[bytes]
    port: int
    admin_port: int | None = None
    node_id: str | None = None

    @property
    def pid(self) -> int:
        return self.process.pid


def load_secrets(state_dir: Path) -> dict[str, str]:
    """The fleet's `IOFLEET_JWT_SECRET` and `IOFLEET_ADMIN_TOKEN`, created on first use."""
    path = state_dir / SECRETS_FILE
    if not path.exists():
        state_dir.mkdir(parents=True, exist_ok=True)
        values = {
            "IOFLEET_JWT_SECRET": secrets.token_urlsafe(48),
            "IOFLEET_ADMIN_TOKEN": secrets.token_urlsafe(32),
        }
        # Created owner-only from the start: never world-readable, even for a moment.
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as out:
            out.writelines(f"{key}={value}\n" for key, value in values.items())
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line)


def _seconds(env: Mapping[str, str], name: str, default: float) -> float:
    value = env.get(f"IOFLEET_{name}", "")
    return float(value) if value.strip() else default


def balancer_timeouts(env: Mapping[str, str]) -> Timeouts:
    """Balancer timeouts from the same `IOFLEET_` settings the servers read."""
    drain = _seconds(env, "DRAIN_DELAY", 5) + _seconds(env, "DRAIN_SECONDS", 30)
    return Timeouts(
        ping_interval_s=_seconds(env, "PING_INTERVAL", 25),
        ping_timeout_s=_seconds(env, "PING_TIMEOUT", 20),
        # After a reload (the nginx lever reloads) old workers cut their WebSockets when
        # this runs out, so it is well above a drain: at least five minutes.
        drain_s=max(int(drain) + 10, 300),
    )


class Fleet:
    """Starts, records and stops the processes of one local fleet."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.redis: Child | None = None
        self.servers: list[Child] = []
        self.balancer: LocalBalancer | None = None
        self.status = "starting"

    @property
    def url(self) -> str:
        return f"http://{HOST}:{self.config.port}/"

    def start(self) -> None:
        """Start everything, recording each process as it starts; stop all on failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        try:
            self._start_redis()
            self._start_servers()
            self._start_balancer()
            self.wait_answering()
        except BaseException:
            self.stop()
            raise
        self.status = "running"
        self.write_state()

    def _start_redis(self) -> None:
        port = free_port()
        argv = ["redis-server", "--bind", HOST, "--port", str(port), "--save", ""]
        argv += ["--appendonly", "no", "--protected-mode", "yes"]
        log_path = self.logs / "redis.log"
        self.redis = Child("redis", spawn(argv, log_path), port)
        self.write_state()
        wait_until(lambda: redis_answers(port), 15, "redis-server", self.redis.process, log_path)

    def server_env(self, node_id: str, port: int, admin_port: int) -> dict[str, str]:
        assert self.redis is not None
        return {
            **self.config.env,
            **load_secrets(self.state_dir),
            "IOFLEET_HOST": HOST,
            "IOFLEET_PORT": str(port),
            "IOFLEET_ADMIN_PORT": str(admin_port),
            "IOFLEET_NODE_ID": node_id,
            "IOFLEET_REDIS_URL": f"redis://{HOST}:{self.redis.port}/0",
            # The demo page gets its token from POST /auth/guest.
            "IOFLEET_GUEST_TOKENS": "true",
            # Our balancer sets X-Forwarded-For; the servers see only it.
            "IOFLEET_TRUST_PROXY_HEADERS": "true",
        }

    def _start_servers(self) -> None:
        for index in range(1, self.config.servers + 1):
            node_id, port, admin_port = f"node{index}", free_port(), free_port()
            process = spawn(
                [sys.executable, "-m", "server"],
                self.logs / f"{node_id}.log",
                env=self.server_env(node_id, port, admin_port),
                cwd=REPO,
            )
            self.servers.append(Child("server", process, port, admin_port, node_id))
            self.write_state()
        for server in self.servers:
            wait_until(
                functools.partial(_ready, server.admin_port),
                30,
                f"server {server.node_id}",
                server.process,
                self.logs / f"{server.node_id}.log",
            )

    def backends(self) -> tuple[Backend, ...]:
        return tuple(Backend(s.node_id or "", HOST, s.port, s.admin_port) for s in self.servers)

    def _start_balancer(self) -> None:
        self.balancer = start_balancer(
            self.config.balancer,
            host=HOST,
            port=self.config.port,
            backends=self.backends(),
            workdir=self.state_dir / "balancer",
            timeouts=balancer_timeouts(self.config.env),
            stickiness=self.config.stickiness,
        )
        self.write_state()

    def wait_answering(self, within: float = 30) -> None:
        """Until the demo page and every server answer through the balancer."""
        wait_until(lambda: http_status(self.url) == 200, within, "the demo page via the balancer")
        for server in self.servers:
            ready = functools.partial(_ready, server.admin_port)
            wait_until(ready, within, f"{server.node_id} ready", server.process)

    def state(self) -> dict[str, Any]:
        balancer = self.balancer
        return {
            "pid": os.getpid(),
            "status": self.status,
            "url": self.url,
            "servers": [
                {"node_id": s.node_id, "pid": s.pid, "port": s.port, "admin_port": s.admin_port}
                for s in self.servers
            ],
            "balancer": None
            if balancer is None
            else {
                "kind": balancer.kind,
                "pid": balancer.pid,
                "port": balancer.port,
                "config": str(balancer.config_path),
                "admin_socket": balancer.haproxy.admin_socket if balancer.haproxy else None,
                "backend": balancer.haproxy.backend_name if balancer.haproxy else None,
            },
            "redis": None
            if self.redis is None
            else {"pid": self.redis.pid, "port": self.redis.port},
            "autoscaler": None,
            "secrets": str(self.state_dir / SECRETS_FILE),
            "logs": str(self.logs),
        }

    def write_state(self) -> None:
        path = self.state_dir / FLEET_FILE
        temporary = path.with_suffix(".tmp")
        temporary.write_text(json.dumps(self.state(), indent=2) + "\n")
        os.replace(temporary, path)

    def stop(self) -> None:
        """Stop balancer, servers, Redis, in that order, by PID; then forget the fleet."""
        if self.balancer is not None:
            self.balancer.stop()
        for server in self.servers:
            # SIGINT stops a server at once: with the balancer gone nobody is left to drain.
            stop_pid(server.pid, first=signal.SIGINT, process=server.process)
        if self.redis is not None:
            stop_pid(self.redis.pid, process=self.redis.process)
        (self.state_dir / FLEET_FILE).unlink(missing_ok=True)

    def exited(self) -> list[str]:
        """Names of children that are no longer running."""
        children: list[tuple[str, subprocess.Popen[bytes]]] = [
            (s.node_id or "server", s.process) for s in self.servers
        ]
        if self.redis is not None:
            children.append(("redis", self.redis.process))
        if self.balancer is not None:
            children.append((self.balancer.kind, self.balancer.process))
        return [name for name, process in children if process.poll() is not None]


def _ready(admin_port: int | None) -> bool:
    return http_status(f"http://{HOST}:{admin_port}/readyz") == 200


def read_state(state_dir: Path) -> dict[str, Any] | None:
    path = state_dir / FLEET_FILE
    if not path.exists():
        return None
    data: dict[str, Any] = json.loads(path.read_text())
    return data


# What each recorded PID must still be running, so a reused PID is never signalled.
_EXPECTED_PROGRAMS = {"redis": "redis-server", "haproxy": "haproxy", "nginx": "nginx"}


def _is_ours(pid: int, program: str) -> bool:
    command = " ".join(pid_command(pid))
    return pid_alive(pid) and program in command


def recorded_pids(state: Mapping[str, Any]) -> list[tuple[int, str]]:
    """(pid, program) of every process a fleet.json records, balancer first."""
    pids: list[tuple[int, str]] = []
    if state.get("balancer"):
        kind = state["balancer"]["kind"]
        pids.append((int(state["balancer"]["pid"]), _EXPECTED_PROGRAMS[kind]))
    pids += [(int(s["pid"]), "server") for s in state.get("servers", [])]
    if state.get("redis"):
        pids.append((int(state["redis"]["pid"]), "redis-server"))
    return pids


def down(state_dir: Path, within: float = 30) -> list[int]:
    """Stop the fleet recorded in `state_dir`; returns the PIDs that had to be stopped here.

    The `iofleet up` process owning the fleet gets SIGTERM and stops its children in
    order; anything it leaves behind (or a fleet whose owner died) is stopped by PID.
    """
    state = read_state(state_dir)
    if state is None:
        return []
    owner = int(state.get("pid", 0))
    if owner and owner != os.getpid() and _is_ours(owner, "iofleet"):
        stop_pid(owner, grace=within)
    leftovers = [pid for pid, program in recorded_pids(state) if _is_ours(pid, program)]
    for pid in leftovers:
        stop_pid(pid, first=signal.SIGTERM, grace=10)
    (state_dir / FLEET_FILE).unlink(missing_ok=True)
    return leftovers
