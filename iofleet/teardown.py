"""Stop what a fleet.json records, by PID, and only processes that are still what it says.

A PID is signalled only while it runs the program recorded for it, so a PID the
system reused for something else is never touched.
"""

from __future__ import annotations

import os
import signal
from pathlib import Path

from iofleet.fleet_state import FleetState
from iofleet.processes import pid_alive, pid_command, stop_pid

# What each recorded PID must still be running.
_PROGRAMS = {"redis": "redis-server", "haproxy": "haproxy", "nginx": "nginx"}


def is_ours(pid: int, program: str) -> bool:
    """`pid` runs and its command line names `program`."""
    return pid_alive(pid) and program in " ".join(pid_command(pid))


def recorded_pids(state: FleetState) -> list[tuple[int, str]]:
    """(pid, program) of every process `state` records, in stopping order.

    The autoscaler first (it would start servers again), then the balancer (no new
    sessions), the servers, and Redis last (servers flush to it while stopping).
    """
    pids: list[tuple[int, str]] = []
    if state.autoscaler is not None:
        pids.append((state.autoscaler.pid, "autoscaler"))
    if state.balancer is not None:
        pids.append((state.balancer.pid, _PROGRAMS[state.balancer.kind]))
    pids += [(s.pid, "server") for s in state.servers]
    if state.redis is not None:
        pids.append((state.redis.pid, _PROGRAMS["redis"]))
    return pids


def down(state_dir: Path, within: float = 30) -> list[int]:
    """Stop the fleet recorded in `state_dir`; returns the PIDs that had to be stopped here.

    The `iofleet up` process owning the fleet gets SIGTERM and stops its children in
    order; anything it leaves behind (or a fleet whose owner died) is stopped by PID.
    """
    state = FleetState.load(state_dir)
    if state is None:
        return []
    if state.pid and state.pid != os.getpid() and is_ours(state.pid, "iofleet"):
        stop_pid(state.pid, grace=within)
    # An autoscaler left running may still add servers: stop it, then read what it left.
    if state.autoscaler is not None and is_ours(state.autoscaler.pid, "autoscaler"):
        stop_pid(state.autoscaler.pid, grace=10)
    state = FleetState.load(state_dir) or state
    leftovers = [pid for pid, program in recorded_pids(state) if is_ours(pid, program)]
    for pid in leftovers:
        stop_pid(pid, first=signal.SIGTERM, grace=10)
    FleetState.forget(state_dir)
    return leftovers
