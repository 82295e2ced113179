"""`iofleet up` / `iofleet down`: run the local fleet in the foreground or detached."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from rich.console import Console
from rich.markup import escape
from rich.table import Table

from iofleet.drain import drain_haproxy_node, drain_server
from iofleet.fleet import Fleet, FleetConfig
from iofleet.fleet_env import save_server_env
from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import FleetState
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.processes import (
    StartError,
    free_port,
    pid_alive,
    port_free,
    spawn,
    stop_pid,
    wait_until,
)
from iofleet.readiness import watch_nginx_readiness
from iofleet.render import Backend
from iofleet.teardown import down
from server.settings import SettingsError

FLEET_LOG = "fleet.log"
AUTOSCALER_LOG = "autoscaler.log"


@dataclass(frozen=True)
class AutoscaleConfig:
    """`iofleet up --min/--max/--target-connections`: the autoscaler's local backend."""

    min: int
    max: int
    target_connections: float | None = None
    """None: the autoscaler's own default (or IOFLEET_AUTOSCALER_TARGET_CONNECTIONS)."""
    status_port: int = 0
    """0: a free port (the URL is printed and in fleet.json)."""
    spare: int = 0
    """Warm spares (`--spare`, IOFLEET_AUTOSCALER_SPARE): started, out of rotation."""

    def env(self) -> dict[str, str]:
        prefix = "IOFLEET_AUTOSCALER_"
        env = {
            f"{prefix}MIN": str(self.min),
            f"{prefix}MAX": str(self.max),
            f"{prefix}STATUS_HOST": "127.0.0.1",
            f"{prefix}STATUS_PORT": str(self.status_port or free_port()),
            f"{prefix}SPARE": str(self.spare),
        }
        if self.target_connections is not None:
            env[f"{prefix}TARGET_CONNECTIONS"] = f"{self.target_connections:g}"
        return env

    def argv(self) -> list[str]:
        """The same options for a detached `iofleet up`."""
        args = ["--min", str(self.min), "--max", str(self.max)]
        if self.target_connections is not None:
            args += ["--target-connections", f"{self.target_connections:g}"]
        return [*args, "--status-port", str(self.status_port), "--spare", str(self.spare)]


def start_autoscaler(
    fleet: Fleet, autoscale: AutoscaleConfig, within: float = 30
) -> subprocess.Popen[bytes]:
    """`python -m autoscaler --backend local` on this fleet; returns once it recorded itself."""
    log_path = fleet.logs / AUTOSCALER_LOG
    argv = [sys.executable, "-m", "autoscaler", "--backend", "local"]
    argv += ["--state-dir", str(fleet.state_dir)]
    process = spawn(argv, log_path, env={**fleet.config.env, **autoscale.env()})

    def recorded() -> bool:
        state = FleetState.load(fleet.state_dir)
        return bool(state and state.autoscaler and state.autoscaler.pid == process.pid)

    try:
        wait_until(recorded, within, "the autoscaler", process, log_path)
    except BaseException:
        stop_pid(process.pid, grace=5, process=process)
        raise
    return process


def _running_owner(state_dir: Path) -> int | None:
    state = FleetState.load(state_dir)
    if state is None:
        return None
    return state.pid if state.pid and pid_alive(state.pid) else None


def _refuse_second_fleet(config: FleetConfig, console: Console) -> bool:
    owner = _running_owner(config.state_dir)
    if owner is not None:
        console.print(
            f"[red]a fleet is already running from {config.state_dir} (pid {owner});"
            " stop it with `iofleet down`[/red]"
        )
        return True
    down(config.state_dir)  # leftovers of a fleet whose owner was killed
    return False


def _taken_port(config: FleetConfig, console: Console) -> bool:
    """The public port, checked before Redis and the servers start (not after, when the
    balancer fails to bind): one line."""
    if port_free(config.port):
        return False
    console.print(f"iofleet up: 127.0.0.1:{config.port} is in use; pick another --port")
    return True


def run_foreground(
    config: FleetConfig, console: Console, autoscale: AutoscaleConfig | None = None
) -> int:
    """Start the fleet (and its autoscaler), print its URLs, stop it all on Ctrl-C/SIGTERM."""
    if _refuse_second_fleet(config, console):
        return 1
    if _taken_port(config, console):
        return 2
    # What `iofleet restart` starts replacements with.
    save_server_env(config.state_dir.resolve(), config.env)
    fleet = Fleet(config)

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    # SIGTERM (`iofleet down`) unwinds like Ctrl-C, whenever it comes.
    signal.signal(signal.SIGTERM, interrupt)
    code = 0
    autoscaler: subprocess.Popen[bytes] | None = None
    try:
        with console.status(f"starting {config.servers} servers behind {config.balancer}..."):
            fleet.start()
            if autoscale is not None:
                autoscaler = start_autoscaler(fleet, autoscale)
        print_fleet(console, FleetState.load(fleet.state_dir) or fleet.state, foreground=True)
        asyncio.run(_supervise(fleet, console, autoscaler))
    except (StartError, SettingsError) as error:
        console.print(f"[red]iofleet up failed:[/red] {escape(str(error))}")
        code = 1
    except KeyboardInterrupt:
        code = 0 if fleet.state.status == "running" else 130
    finally:
        # A second Ctrl-C must not cut the stop short and leave processes behind.
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        with console.status("stopping the fleet..."):
            # The autoscaler first, so fleet.json lists every server it started when
            # fleet.stop() reads it.
            if autoscaler is not None:
                stop_pid(autoscaler.pid, grace=10, process=autoscaler)
            fleet.stop()
        console.print("fleet stopped")
    return code


async def _supervise(
    fleet: Fleet, console: Console, autoscaler: subprocess.Popen[bytes] | None = None
) -> None:
    """Wait for Ctrl-C/SIGTERM; report children that exit; keep nginx's readiness in sync.

    A server the autoscaler drained leaves fleet.json before it exits: not reported.
    """
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    watcher: asyncio.Task[None] | None = None
    if fleet.balancer is not None and fleet.balancer.kind == "nginx":
        state_dir = fleet.state_dir

        def backends() -> tuple[Backend, ...]:
            # fleet.json, not our own list: the autoscaler adds and removes servers there.
            state = FleetState.load(state_dir) or fleet.state
            return tuple(
                Backend(s.node_id, "127.0.0.1", s.port, s.admin_port) for s in state.servers
            )

        watcher = asyncio.create_task(
            watch_nginx_readiness(fleet.balancer.nginx_balancer(), backends)
        )
    reported: set[str] = set()
    while not stop.is_set():
        exited = set(fleet.exited())
        if autoscaler is not None and autoscaler.poll() is not None:
            exited.add("autoscaler")
        recorded = FleetState.load(fleet.state_dir) or fleet.state
        removed = {s.spec.node_id for s in fleet.servers} - {s.node_id for s in recorded.servers}
        for name in sorted(exited - removed - reported):
            console.print(f"[yellow]{name} exited; see {fleet.logs}[/yellow]")
            reported.add(name)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), 1.0)
    if watcher is not None:
        watcher.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watcher


def run_detached(
    config: FleetConfig,
    console: Console,
    within: float = 90,
    autoscale: AutoscaleConfig | None = None,
) -> int:
    """Start `iofleet up` in the background and return once everything answers."""
    if _refuse_second_fleet(config, console):
        return 1
    if _taken_port(config, console):
        return 2
    state_dir = config.state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    log_path = state_dir / FLEET_LOG
    log_path.write_text("")
    argv = [sys.executable, "-m", "iofleet", "up", "--state-dir", str(state_dir)]
    argv += ["--servers", str(config.servers), "--balancer", config.balancer]
    argv += ["--port", str(config.port)]
    if config.stickiness:
        argv += ["--stickiness", config.stickiness]
    recovery = config.env.get("IOFLEET_RECOVERY", "true").lower() == "true"
    argv += ["--recovery" if recovery else "--no-recovery"]
    if autoscale is not None:
        argv += autoscale.argv()
    owner = spawn(argv, log_path, env=config.env)
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        state = FleetState.load(state_dir)
        started = state and state.pid == owner.pid and state.status == "running"
        if state and started and (autoscale is None or state.autoscaler is not None):
            print_fleet(console, state, foreground=False)
            return 0
        if owner.poll() is not None:
            # The log is text, not markup (an HAProxy error has `[file:line]` in it).
            console.print(
                f"[red]iofleet up failed[/red]; {log_path}:\n{escape(log_path.read_text())}"
            )
            return 1
        time.sleep(0.2)
    console.print(f"[red]the fleet did not answer within {within:.0f}s[/red]; see {log_path}")
    down(state_dir)
    return 1


def run_down(state_dir: Path, console: Console) -> int:
    if FleetState.load(state_dir) is None:
        console.print(f"no fleet recorded in {state_dir}")
        return 0
    leftovers = down(state_dir)
    note = f" (stopped {len(leftovers)} leftover processes by pid)" if leftovers else ""
    console.print(f"fleet stopped{note}")
    return 0


def print_fleet(console: Console, state: FleetState, foreground: bool) -> None:
    """The URLs of a running fleet; secrets are named by file, never printed."""
    table = Table(title="iofleet local fleet", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where")
    table.add_row("demo chat", f"[bold green]{state.url}[/bold green]")
    if state.balancer is not None:
        balancer = state.balancer
        table.add_row(f"balancer ({balancer.kind})", f"pid {balancer.pid}, {balancer.config}")
        if balancer.admin_socket:
            table.add_row("HAProxy runtime API", balancer.admin_socket)
    for server in state.servers:
        admin = f"http://127.0.0.1:{server.admin_port}"
        table.add_row(
            f"server {server.node_id}",
            f"pid {server.pid}, {admin}/admin/status, {admin}/metrics",
        )
    if state.autoscaler is not None:
        table.add_row("autoscaler", state.autoscaler.status_url)
    if state.redis is not None:
        table.add_row("redis", f"redis://127.0.0.1:{state.redis.port}/0")
    table.add_row("secrets (JWT, admin token)", state.secrets)
    table.add_row("logs", state.logs)
    console.print(table)
    console.print("Ctrl-C stops everything." if foreground else "Stop it with `iofleet down`.")


def run_drain(state_dir: Path, node_id: str, within: float, console: Console) -> int:
    """`iofleet drain NODE`: the server leaves the balancer, its clients move to the others.

    HAProxy: the runtime API's `drain`, the server's own paced drain, then maintenance
    once it holds no session (a server of the config file cannot be deleted at runtime:
    its sid `use-server` rule names it). nginx: the server's drain
    turns its /readyz to 503, and the fleet's readiness watcher takes it out of the pool.
    Either way the server leaves fleet.json (it exits by itself once drained).
    """
    state = FleetState.load(state_dir)
    if state is None or state.balancer is None:
        console.print(f"no fleet recorded in {state_dir}")
        return 1
    try:
        server = state.server(node_id)
    except KeyError as error:
        console.print(f"[red]{error.args[0]}[/red]")
        return 1
    admin_url = f"http://127.0.0.1:{server.admin_port}"
    token = load_secrets(state_dir)["IOFLEET_ADMIN_TOKEN"]
    balancer = state.balancer
    with console.status(f"draining {node_id}..."):
        if balancer.kind == "haproxy" and balancer.admin_socket and balancer.backend:
            runtime = HaproxyRuntime(balancer.admin_socket)
            drained = asyncio.run(
                drain_haproxy_node(
                    runtime, balancer.backend, node_id, admin_url=admin_url, token=token,
                    within=within,
                )
            )  # fmt: skip
        else:
            asyncio.run(drain_server(admin_url, token, wait=True, within=within))
            drained = True
    FleetState.update(state_dir, lambda fleet: fleet.remove_server(node_id))
    if not drained:
        console.print(f"[yellow]{node_id} still had sessions after {within:.0f}s[/yellow]")
        return 1
    console.print(f"{node_id} drained and out of the balancer")
    return 0
