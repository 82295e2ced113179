"""Run HAProxy or nginx on this machine from rendered configs, everything under one directory.

Used by the local fleet and by the tests: the config, pid file, admin socket, logs
and nginx temp paths all live in `workdir`, so several instances never collide.
"""

from __future__ import annotations

import resource
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from iofleet.fleet_state import BalancerRecord
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.nginx_balancer import NginxBalancer
from iofleet.processes import StartError, spawn, stop_pid, tcp_answers, wait_until
from iofleet.render import (
    Backend,
    HaproxyOptions,
    NginxOptions,
    Timeouts,
    render_haproxy,
    render_nginx,
)

BalancerKind = Literal["haproxy", "nginx"]


@dataclass
class LocalBalancer:
    """A running HAProxy or nginx and the files it was started from."""

    kind: BalancerKind
    host: str
    port: int
    workdir: Path
    process: subprocess.Popen[bytes]
    config_path: Path
    haproxy: HaproxyOptions | None = None
    nginx: NginxOptions | None = None
    nginx_args: list[str] = field(default_factory=list)

    @property
    def pid(self) -> int:
        return self.process.pid

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    @property
    def log_path(self) -> Path:
        return self.workdir / f"{self.kind}.log"

    def runtime(self) -> HaproxyRuntime:
        """HAProxy's runtime API (the drain lever, servers added and removed)."""
        assert self.haproxy is not None and self.haproxy.admin_socket is not None
        return HaproxyRuntime(self.haproxy.admin_socket)

    def nginx_balancer(self) -> NginxBalancer:
        """The running nginx's pool, changed by config rewrite and graceful reload."""
        assert self.nginx is not None
        return NginxBalancer(self.nginx, self.config_path, self.nginx_args)

    @property
    def record(self) -> BalancerRecord:
        """What fleet.json says about this balancer."""
        return BalancerRecord(
            kind=self.kind,
            pid=self.pid,
            port=self.port,
            config=str(self.config_path),
            admin_socket=self.haproxy.admin_socket if self.haproxy else None,
            backend=self.haproxy.backend_name if self.haproxy else None,
        )

    def stop(self, grace: float = 10.0) -> None:
        stop_pid(self.pid, grace=grace, process=self.process)


def connection_budget() -> int:
    """nginx worker connections this machine's open-file limit allows (two fds per proxied one)."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    limit = 1_000_000 if soft == resource.RLIM_INFINITY else soft
    return max(256, min(100_000, (limit - 200) // 2))


def haproxy_options(
    host: str, port: int, backends: tuple[Backend, ...], workdir: Path, **fields: object
) -> HaproxyOptions:
    """HAProxy options for a local instance: admin socket in `workdir`, logs to stdout.

    `fields` override any of these (and set any other `HaproxyOptions` field).
    """
    # maxconn stays unset: HAProxy derives it from the fd limit it finds.
    local: dict[str, object] = {"admin_socket": str(workdir / "haproxy.sock"), "log": "stdout"}
    return HaproxyOptions(
        listen=f"{host}:{port}",
        backends=backends,
        **(local | fields),  # type: ignore[arg-type]
    )


def nginx_options(
    host: str, port: int, backends: tuple[Backend, ...], workdir: Path, **fields: object
) -> NginxOptions:
    """nginx options for a local instance: foreground, pid/logs/temp paths in `workdir`.

    `fields` override any of these (and set any other `NginxOptions` field).
    """
    local: dict[str, object] = {
        "daemon": False,
        "pid_path": str(workdir / "nginx.pid"),
        "error_log": str(workdir / "nginx-error.log"),
        "temp_dir": str(workdir / "nginx-temp"),
        # Two workers: enough to show reloads are graceful, few enough for a laptop.
        "worker_processes": "2",
        "worker_connections": connection_budget(),
    }
    return NginxOptions(
        listen=f"{host}:{port}",
        backends=backends,
        **(local | fields),  # type: ignore[arg-type]
    )


def start_haproxy(options: HaproxyOptions, workdir: Path, within: float = 15) -> LocalBalancer:
    workdir.mkdir(parents=True, exist_ok=True)
    config = workdir / "haproxy.cfg"
    config.write_text(render_haproxy(options))
    check = subprocess.run(
        ["haproxy", "-c", "-q", "-f", str(config)],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    if check.returncode != 0:
        raise StartError(f"haproxy -c {config}: {check.stdout}{check.stderr}")
    unix_socket = _unix_socket(options.admin_socket)
    if unix_socket is not None:
        unix_socket.unlink(missing_ok=True)  # a stale one from a killed run
    host, port = _split(options.listen)
    log_path = workdir / "haproxy.log"
    process = spawn(["haproxy", "-f", str(config)], log_path)
    balancer = LocalBalancer("haproxy", host, port, workdir, process, config, haproxy=options)
    _wait_listening(balancer, within)
    if unix_socket is not None:
        wait_until(unix_socket.exists, within, "haproxy admin socket", process, log_path)
    return balancer


def _unix_socket(admin_socket: str | None) -> Path | None:
    """The admin socket's path, None for none or a TCP one (`ipv4@HOST:PORT`)."""
    if not admin_socket or admin_socket.startswith(("ipv4@", "ipv6@")):
        return None
    return Path(admin_socket)


def start_nginx(options: NginxOptions, workdir: Path, within: float = 15) -> LocalBalancer:
    workdir.mkdir(parents=True, exist_ok=True)
    if options.temp_dir:
        Path(options.temp_dir).mkdir(parents=True, exist_ok=True)
    config = workdir / "nginx.conf"
    config.write_text(render_nginx(options))
    args = ["-p", str(workdir), "-c", str(config), "-e", options.error_log]
    check = subprocess.run(
        ["nginx", *args, "-t", "-q"], capture_output=True, text=True, timeout=30, check=False
    )
    if check.returncode != 0:
        raise StartError(f"nginx -t {config}: {check.stdout}{check.stderr}")
    host, port = _split(options.listen)
    process = spawn(["nginx", *args], workdir / "nginx.log")
    balancer = LocalBalancer(
        "nginx", host, port, workdir, process, config, nginx=options, nginx_args=args
    )
    _wait_listening(balancer, within)
    wait_until(Path(options.pid_path).exists, within, "nginx pid file", process)
    return balancer


def _wait_listening(balancer: LocalBalancer, within: float) -> None:
    try:
        wait_until(
            lambda: tcp_answers(balancer.host, balancer.port),
            within,
            f"{balancer.kind} on {balancer.host}:{balancer.port}",
            balancer.process,
            balancer.log_path,
        )
    except StartError:
        balancer.stop(grace=2)
        raise


def _split(listen: str) -> tuple[str, int]:
    host, _, port = listen.rpartition(":")
    host = host.strip("[]")
    return (host if host and host not in {"0.0.0.0", "*", "::"} else "127.0.0.1"), int(port)


def start_balancer(
    kind: BalancerKind,
    *,
    host: str,
    port: int,
    backends: tuple[Backend, ...],
    workdir: Path,
    timeouts: Timeouts,
    stickiness: str | None = None,
    spare_servers: tuple[str, ...] = (),
) -> LocalBalancer:
    """Start a local balancer of `kind` in front of `backends`.

    `spare_servers`: HAProxy slots for servers added later (nginx needs none: its pool
    is rewritten on reload).
    """
    extra: dict[str, object] = {"timeouts": timeouts}
    if stickiness:
        extra["stickiness"] = stickiness
    if kind == "haproxy":
        extra["spare_servers"] = spare_servers
        return start_haproxy(haproxy_options(host, port, backends, workdir, **extra), workdir)
    return start_nginx(nginx_options(host, port, backends, workdir, **extra), workdir)
