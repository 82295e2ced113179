"""The parts that join local regional fleets into one: each region's relay
(`python -m relay`) and, on each directed link, a delay proxy
(`python -m iofleet.delay_proxy`) standing for the inter-region path.

Production joins regions the same way (docs/regions.md): region A's relay reaches
region B's Redis over the peered network; here A's relay reaches B's Redis
through a proxy that adds the one-way delay (70 ms: roughly us-east-1 <->
eu-west-1) and can be cut. `iofleet up --regions N` and the tests under
tests/regions/ start them with these helpers.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from iofleet.processes import free_port, http_status, spawn, stop_pid, tcp_answers, wait_until

HOST = "127.0.0.1"
DELAY_MS = 70.0


def region_names(count: int) -> list[str]:
    """Local regions' names: `r1`, `r2`, ... (production uses the AWS region)."""
    return [f"r{index}" for index in range(1, count + 1)]


@dataclass
class DelayProxyProcess:
    """The path from one region to another region's Redis."""

    source: str
    target_region: str
    target_port: int
    delay_ms: float = DELAY_MS
    port: int = field(default_factory=free_port)
    control_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None

    @property
    def control_url(self) -> str:
        return f"http://{HOST}:{self.control_port}"

    def start(self, log_dir: Path) -> DelayProxyProcess:
        log_path = log_dir / f"link-{self.source}-{self.target_region}.log"
        argv = [sys.executable, "-m", "iofleet.delay_proxy", "--listen", f"{HOST}:{self.port}"]
        argv += ["--target", f"{HOST}:{self.target_port}", "--delay-ms", f"{self.delay_ms:g}"]
        argv += ["--control", f"{HOST}:{self.control_port}"]
        self.process = spawn(argv, log_path)
        wait_until(
            lambda: (
                http_status(f"{self.control_url}/stats") == 200 and tcp_answers(HOST, self.port)
            ),
            15,
            f"link {self.source}->{self.target_region}",
            self.process,
            log_path,
        )
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, grace=2, process=self.process)
        self.process = None


@dataclass
class RelayProcess:
    """One region's relay, reaching each far region's Redis through `far` (name -> URL)."""

    region: str
    redis_url: str
    far: Mapping[str, str]
    env: Mapping[str, str] = field(default_factory=dict)
    admin_port: int = field(default_factory=free_port)
    process: subprocess.Popen[bytes] | None = None
    log_path: Path | None = None

    @property
    def admin_url(self) -> str:
        return f"http://{HOST}:{self.admin_port}"

    def environment(self) -> dict[str, str]:
        return {
            "IOFLEET_RELAY_REGION": self.region,
            "IOFLEET_RELAY_REDIS_URL": self.redis_url,
            "IOFLEET_RELAY_FAR_REDIS_URL": ",".join(f"{k}={v}" for k, v in self.far.items()),
            "IOFLEET_RELAY_ADMIN_HOST": HOST,
            "IOFLEET_RELAY_ADMIN_PORT": str(self.admin_port),
            **self.env,
        }

    def start(self, log_dir: Path, base_env: Mapping[str, str]) -> RelayProcess:
        self.log_path = log_dir / f"relay-{self.region}.log"
        env = {**base_env, **self.environment()}
        self.process = spawn([sys.executable, "-m", "relay"], self.log_path, env=env)
        wait_until(
            lambda: http_status(f"{self.admin_url}/readyz") == 200,
            20,
            f"relay {self.region}",
            self.process,
            self.log_path,
        )
        return self

    def stop(self, grace: float = 5) -> None:
        if self.process is not None:
            stop_pid(self.process.pid, grace=grace, process=self.process)
        self.process = None


def links_between(
    redis_ports: Mapping[str, int], delay_ms: float = DELAY_MS
) -> list[DelayProxyProcess]:
    """One proxy per ordered pair of regions: the path from the first to the second's Redis."""
    return [
        DelayProxyProcess(source, target, port, delay_ms)
        for source in redis_ports
        for target, port in redis_ports.items()
        if target != source
    ]


def relays_for(
    redis_ports: Mapping[str, int],
    links: Sequence[DelayProxyProcess],
    env: Mapping[str, str] | None = None,
) -> list[RelayProcess]:
    """Each region's relay, reaching the far Redis through its links."""
    return [
        RelayProcess(
            region,
            f"redis://{HOST}:{port}/0",
            {
                link.target_region: f"redis://{HOST}:{link.port}/0"
                for link in links
                if link.source == region
            },
            dict(env or {}),
        )
        for region, port in redis_ports.items()
    ]
