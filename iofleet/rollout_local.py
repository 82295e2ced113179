"""`iofleet restart`: a rolling restart of the local fleet that loses no message.

Each server in turn, the way a Kubernetes Deployment with `maxSurge: 1,
maxUnavailable: 0` replaces pods: a new server starts in a free balancer slot (the
fleet keeps one surge slot, `FleetConfig.surge_slots`), answers /readyz and is in the
balancer's rotation; only then does the old one drain (`Lever.drain`: the balancer's
lever, the server's paced close, the wait until it holds no session). Its clients
reconnect through the balancer to the others; with connection state recovery (on by
default, `iofleet up --recovery`) they come back with their sid and rooms and get
every event they missed. The old server leaves fleet.json once it is stopped, so
`iofleet down` finds every process at every moment.

The replacements get the settings the fleet was started with (`fleet_env`), and the
code now on disk: that is what a restart is for. The balancer levers and the drain
budget are the autoscaler's local backend's own, so both move servers one way.

Beside the autoscaler (`make up`'s fleet), the restart holds the fleet
(`autoscaler.local.hold`): it waits until the autoscaler has paused with none of its
own starts or drains in flight, names the server it is replacing (the autoscaler counts
the replacement in its place, never both), and releases the hold at the end, whatever
happens; the autoscaler's next sync then scales to what it wants. Warm spares are the
autoscaler's headroom, not replicas: the restart stops them (out of rotation, nobody on
them), and the autoscaler starts fresh ones, on the new code, once the hold ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import os
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from rich.console import Console
from rich.table import Table

from autoscaler.local.backend import drain_budget, lever_for
from autoscaler.local.hold import HoldError, hold_fleet, set_replacing
from autoscaler.local.levers import Lever
from iofleet.fleet_env import load_server_env
from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import FleetState, ServerRecord
from iofleet.local_servers import ServerSpec, start_server
from iofleet.processes import StartError, pid_alive, stop_pid
from iofleet.teardown import is_ours

RESTART_LOCK = "restart.lock"
HOLD_MARGIN_SECONDS = 10.0
"""Beyond a drain and a start: the autoscaler reads a hold twice a second."""
EXIT_WAIT_SECONDS = 10.0
"""How long a drained server may take to exit by itself before it is stopped by PID."""


class RestartError(RuntimeError):
    """The restart cannot start or go on; the message says why and what to do."""


@dataclass(frozen=True)
class Replacement:
    """One step: `old` replaced by `new`, timed."""

    old: str
    new: str
    in_rotation_s: float
    """From starting `new` to the balancer sending it sessions."""
    drain_s: float
    """From the drain of `old` starting to its process gone."""
    drained: bool
    """`old` emptied within the drain budget (False: what was left was cut)."""


@dataclass(frozen=True)
class RestartReport:
    replacements: tuple[Replacement, ...]
    total_s: float


@contextlib.contextmanager
def one_restart_at_a_time(state_dir: Path) -> Iterator[None]:
    """Two restarts of one fleet would take each other's surge slot."""
    with (state_dir / RESTART_LOCK).open("a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise RestartError(f"a restart of {state_dir} is already under way") from None
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _running_fleet(state_dir: Path) -> FleetState:
    state = FleetState.load(state_dir)
    if state is None or state.status != "running":
        raise RestartError(f"no running fleet in {state_dir} (start one with `iofleet up`)")
    if not any(not s.spare for s in state.servers):
        raise RestartError(f"the fleet in {state_dir} has no server to restart")
    return state


async def rolling_restart(
    state_dir: Path,
    *,
    start_within: float = 30.0,
    on_step: Callable[[str], None] = lambda line: None,
) -> RestartReport:
    """Replace every server of the fleet in `state_dir` (absolute), one at a time."""
    started = time.monotonic()
    _running_fleet(state_dir)  # before the lock file: no state directory, nothing made
    with one_restart_at_a_time(state_dir):
        state = _running_fleet(state_dir)
        try:
            settings = load_server_env(state_dir)
        except FileNotFoundError:
            raise RestartError(
                f"{state_dir} records no server settings (a fleet started by an older"
                " iofleet): restart it with `iofleet down` and `iofleet up`"
            ) from None
        # The caller's PATH and the like, the fleet's own settings and secrets.
        inherited = {k: v for k, v in os.environ.items() if not k.startswith("IOFLEET_")}
        redis = {"IOFLEET_REDIS_URL": state.redis.url} if state.redis else {}
        env = {**inherited, **settings, **load_secrets(state_dir), **redis}
        budget = drain_budget(env)
        replacements = []
        # The autoscaler may be in the middle of one start and one drain of its own.
        pause_within = budget + start_within + HOLD_MARGIN_SECONDS
        try:
            async with hold_fleet(state_dir, "iofleet restart", within=pause_within,
                                  on_wait=on_step):  # fmt: skip
                state = _running_fleet(state_dir)  # as the paused autoscaler left it
                await asyncio.to_thread(_retire_spares, state_dir, state, on_step)
                for old in [s for s in state.servers if not s.spare]:
                    step = await _replace(state_dir, old, env, budget, start_within, on_step)
                    replacements.append(step)
        except HoldError as error:
            raise RestartError(str(error)) from None
    return RestartReport(tuple(replacements), time.monotonic() - started)


def _retire_spares(state_dir: Path, state: FleetState, on_step: Callable[[str], None]) -> None:
    """Stop the warm spares (old code, out of rotation, nobody on them): SIGINT, no drain."""
    for spare in (s for s in state.servers if s.spare):
        if is_ours(spare.pid, "server"):
            stop_pid(spare.pid, grace=10, first=signal.SIGINT)

        def forget(fleet: FleetState, spare: ServerRecord = spare) -> None:
            if spare in fleet.servers:
                fleet.remove_server(spare.node_id)

        FleetState.update(state_dir, forget)
        on_step(f"spare {spare.node_id} stopped (the autoscaler starts a new one after)")


async def _replace(
    state_dir: Path,
    old: ServerRecord,
    env: dict[str, str],
    drain_within: float,
    start_within: float,
    on_step: Callable[[str], None],
) -> Replacement:
    state = _running_fleet(state_dir)
    set_replacing(state_dir, old.node_id)
    # NginxLever names nodes up to its max: one more than the fleet holds now.
    lever = lever_for(state, len(state.servers) + 1)
    in_use = {s.node_id for s in state.servers}
    names = await lever.free_names(in_use, 1)
    if not names:
        raise RestartError(
            "no free balancer slot for a replacement: the fleet's HAProxy has none left"
            " (fleets started by this iofleet keep one surge slot)"
        )
    name = names[0]
    on_step(f"starting {name} to replace {old.node_id}")
    begun = time.monotonic()
    await _start_in_rotation(state_dir, state, name, env, lever, start_within)
    in_rotation = time.monotonic() - begun
    on_step(f"{name} ready and in rotation after {in_rotation:.2f}s; draining {old.node_id}")
    begun = time.monotonic()
    token = env["IOFLEET_ADMIN_TOKEN"]
    admin = f"http://127.0.0.1:{old.admin_port}"
    try:
        drained = await lever.drain(old.node_id, admin, token, within=drain_within)
    except (OSError, RuntimeError, TimeoutError, aiohttp.ClientError) as error:
        # As the autoscaler's scale-down: the server is stopped by its PID all the same
        # (SIGTERM starts its own drain), and the step says it was cut.
        on_step(f"drain of {old.node_id} failed: {error}; stopping it by its PID")
        drained = False
    await asyncio.to_thread(_stop_when_exited, old.pid)

    def forget(fleet: FleetState) -> None:
        if any(s.node_id == old.node_id and s.pid == old.pid for s in fleet.servers):
            fleet.remove_server(old.node_id)

    FleetState.update(state_dir, forget)
    set_replacing(state_dir, None)
    drain_s = time.monotonic() - begun
    on_step(f"{old.node_id} drained and stopped in {drain_s:.2f}s")
    return Replacement(old.node_id, name, in_rotation, drain_s, drained)


async def _start_in_rotation(
    state_dir: Path,
    state: FleetState,
    name: str,
    env: dict[str, str],
    lever: Lever,
    within: float,
) -> None:
    """Start server `name`, record it, and return once the balancer sends it sessions;
    on failure it is stopped and forgotten, and the old server keeps serving."""
    redis_url = state.redis.url if state.redis else None
    spec = ServerSpec.on_free_ports(name, redis_url)
    server = start_server(spec, env, Path(state.logs))
    try:
        FleetState.update(state_dir, lambda fleet: fleet.add_server(server.record))
        await asyncio.to_thread(server.wait_ready, within)
        await lever.join(spec, within)
    except (StartError, TimeoutError, OSError, ValueError, RuntimeError) as error:
        await asyncio.to_thread(server.stop, 5)
        with contextlib.suppress(KeyError):
            FleetState.update(state_dir, lambda fleet: fleet.remove_server(name))
        first = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise RestartError(f"{name} did not come into rotation: {first}") from None


def _stop_when_exited(pid: int) -> None:
    """A drained server exits by itself; one still running after EXIT_WAIT_SECONDS is
    stopped by its PID (only while it is still a server process)."""
    deadline = time.monotonic() + EXIT_WAIT_SECONDS
    while pid_alive(pid) and time.monotonic() < deadline:
        time.sleep(0.05)
    if is_ours(pid, "server"):
        stop_pid(pid, grace=10, first=signal.SIGTERM)


def run_restart(state_dir: Path, console: Console) -> int:
    """`iofleet restart`: the restart with a line per step and a table at the end."""
    try:
        report = asyncio.run(rolling_restart(state_dir.resolve(), on_step=console.print))
    except RestartError as error:
        console.print(f"[red]iofleet restart:[/red] {error}")
        return 1
    table = Table(title="rolling restart", header_style="bold")
    for column in ("old", "new", "in rotation (s)", "drain (s)", "drained"):
        table.add_column(column)
    for step in report.replacements:
        table.add_row(
            step.old, step.new, f"{step.in_rotation_s:.2f}", f"{step.drain_s:.2f}",
            "yes" if step.drained else "[yellow]cut[/yellow]",
        )  # fmt: skip
    console.print(table)
    console.print(f"{len(report.replacements)} servers replaced in {report.total_s:.1f}s")
    return 0 if all(step.drained for step in report.replacements) else 1
