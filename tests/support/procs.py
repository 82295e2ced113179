"""Real processes on loopback for the tests: redis-server and iofleet servers.

Every process is started on 127.0.0.1 on a free port and stopped by its PID, with
the product's own helpers (`iofleet.processes`, `iofleet.local_servers`).
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import jwt

from iofleet import processes
from iofleet.local_servers import redis_command
from iofleet.processes import free_port, http_status, redis_answers, stop_pid

__all__ = [
    "TEST_ADMIN_TOKEN",
    "TEST_JWT_SECRET",
    "RedisServer",
    "ServerProcess",
    "free_port",
    "http_status",
    "make_token",
    "wait_until",
]

REPO = Path(__file__).resolve().parents[2]
TEST_JWT_SECRET = "test-secret-for-loopback-only-0123456789"
TEST_ADMIN_TOKEN = "test-admin-token"


def run_iofleet(
    *args: str, env: Mapping[str, str], within: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m iofleet ARGS` from the repository, as a user runs it; output captured."""
    return run_module("iofleet", *args, env=env, within=within)


def run_module(
    module: str, *args: str, env: Mapping[str, str], within: float = 120
) -> subprocess.CompletedProcess[str]:
    """`python -m MODULE ARGS` from the repository; output captured, never raises on exit."""
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True,
        text=True,
        timeout=within,
        cwd=REPO,
        check=False,
        env=dict(env),
    )


def make_token(user: str, secret: str = TEST_JWT_SECRET, ttl: float = 600, **claims: object) -> str:
    now = int(time.time())
    payload = {"sub": user, "iat": now, "exp": now + int(ttl), **claims}
    return jwt.encode(payload, secret, algorithm="HS256")


def wait_until(
    predicate: Callable[[], object], timeout: float = 15, what: str = "condition"
) -> None:
    """`iofleet.processes.wait_until`, raising TimeoutError as the tests expect."""
    try:
        processes.wait_until(lambda: bool(predicate()), timeout, what)
    except processes.StartError as error:
        raise TimeoutError(str(error)) from None


@dataclass
class RedisServer:
    port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        self.process = subprocess.Popen(
            redis_command(self.port), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
        )
        wait_until(lambda: redis_answers(self.port), timeout=10, what="redis-server")
        return self

    def stop(self) -> None:
        """Killed at once: tests stop Redis to simulate an outage."""
        if self.process is not None:
            stop_pid(self.process.pid, grace=0, first=signal.SIGKILL, process=self.process)
        self.process = None


@dataclass
class ServerProcess:
    """One `python -m server` on loopback, its log in a temp file."""

    node_id: str
    env: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def admin_url(self) -> str:
        return f"http://127.0.0.1:{self.admin_port}"

    def start(self, wait_ready: bool = True) -> ServerProcess:
        env = {
            **os.environ,
            "IOFLEET_HOST": "127.0.0.1",
            "IOFLEET_PORT": str(self.port),
            "IOFLEET_ADMIN_PORT": str(self.admin_port),
            "IOFLEET_NODE_ID": self.node_id,
            "IOFLEET_JWT_SECRET": TEST_JWT_SECRET,
            "IOFLEET_ADMIN_TOKEN": TEST_ADMIN_TOKEN,
            "IOFLEET_CORS_ORIGINS": "http://localhost",
            **self.env,
        }
        fd, name = tempfile.mkstemp(prefix=f"iofleet-{self.node_id}-", suffix=".log")
        self.log_path = Path(name)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "server"], env=env, cwd=REPO, stdout=fd, stderr=fd
        )
        os.close(fd)
        if wait_ready:
            try:
                self.wait_ready()
            except BaseException:
                self.stop()
                raise
        return self

    def wait_ready(self, timeout: float = 20) -> None:
        def ready() -> bool:
            if self.process is not None and self.process.poll() is not None:
                raise RuntimeError(f"{self.node_id} exited early:\n{self.log()}")
            return http_status(f"{self.admin_url}/readyz") == 200

        try:
            wait_until(ready, timeout=timeout, what=f"{self.node_id} ready")
        except TimeoutError:
            raise TimeoutError(f"{self.node_id} not ready in {timeout}s:\n{self.log()}") from None

    def log(self) -> str:
        return self.log_path.read_text() if self.log_path else ""

    def log_entries(self) -> list[dict[str, object]]:
        """The JSON log lines written so far; a line still being written is left out."""
        complete = self.log().rpartition("\n")[0]
        return [json.loads(line) for line in complete.splitlines() if line.strip()]

    def signal(self, signum: int = signal.SIGTERM) -> None:
        assert self.process is not None
        self.process.send_signal(signum)

    def wait_exit(self, timeout: float = 30) -> int:
        assert self.process is not None
        return self.process.wait(timeout)

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, grace=0, first=signal.SIGKILL, process=self.process)
        self.process = None
        if self.log_path is not None:
            self.log_path.unlink(missing_ok=True)


@contextlib.contextmanager
def two_nodes(env: Mapping[str, str]) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """`node-a` and `node-b` with `env` each, started in turn and both stopped
    afterwards (also when the second fails to start)."""
    nodes = (ServerProcess("node-a", env=dict(env)), ServerProcess("node-b", env=dict(env)))
    try:
        for node in nodes:
            node.start()
        yield nodes
    finally:
        for node in nodes:
            node.stop()
