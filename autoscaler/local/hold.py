"""Who may start and stop the local fleet's servers right now: the autoscaler, or the
holder of a hold recorded in fleet.json (`iofleet restart`).

The holder takes the hold with `hold_fleet` (at most one holder at a time), waits until
the fleet's autoscaler, if one runs, has acknowledged it, moves servers, and clears it.
The autoscaler's local actuator reads it with `observe_hold` at every sync and twice a
second between syncs: while a hold is recorded it starts, promotes and drains nothing
(it keeps scraping and deciding, so its status page and history stay current);
it acknowledges the hold once no start or drain of its own is left in flight; it counts
the server being replaced (`HoldRecord.replacing`) neither as a replica nor as a sample,
so the replacement is not counted twice; and it clears a hold whose holder is gone (a
restart killed half-way must not pause the fleet for good). The first sync after the
hold is released scales to what the autoscaler wants.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path

from iofleet.fleet_state import FleetState, HoldRecord
from iofleet.processes import pid_alive
from iofleet.teardown import is_ours

log = logging.getLogger("iofleet.autoscaler.local.hold")
POLL_SECONDS = 0.1
"""How often the holder looks for the autoscaler's acknowledgement."""


class HoldError(RuntimeError):
    """The hold cannot be taken or was not acknowledged; nothing was moved."""


def observe_hold(state_dir: Path, me: int, *, idle: bool) -> HoldRecord | None:
    """The hold in force for the autoscaler `me` (None: the fleet is its own to move).

    Acknowledged by `me` when `idle` (no start or drain of its own in flight); a hold
    whose holder is gone is cleared, with a log line. Writes fleet.json only to change it.
    """
    state = FleetState.load(state_dir)
    hold = state.hold if state is not None else None
    if hold is None or (hold.acknowledged_by == me and pid_alive(hold.pid)):
        return hold
    seen: HoldRecord | None = None

    def change(fleet: FleetState) -> None:
        nonlocal seen
        current = fleet.hold
        if current is None:
            return
        if not pid_alive(current.pid):
            log.warning(
                "cleared the hold of pid %d (%s): the holder is gone",
                current.pid, current.reason,
                extra={"event": "local.hold_stale"},
            )  # fmt: skip
            fleet.hold = None
            return
        if idle and current.acknowledged_by != me:
            current = dataclasses.replace(current, acknowledged_by=me)
            fleet.hold = current
        seen = current

    with contextlib.suppress(FileNotFoundError):
        FleetState.update(state_dir, change)
    return seen


@contextlib.asynccontextmanager
async def hold_fleet(
    state_dir: Path,
    reason: str,
    *,
    within: float,
    on_wait: Callable[[str], None] = lambda line: None,
) -> AsyncIterator[None]:
    """Hold the fleet in `state_dir` for the body: the autoscaler (if any) has paused
    when the body starts, and resumes when it ends, whatever happens in it."""
    me = os.getpid()

    def take(fleet: FleetState) -> None:
        held = fleet.hold
        if held is not None and held.pid != me and pid_alive(held.pid):
            raise HoldError(f"the fleet is held by pid {held.pid} ({held.reason})")
        fleet.hold = HoldRecord(me, reason)

    FleetState.update(state_dir, take)
    try:
        await _acknowledged(state_dir, within, on_wait)
        yield
    finally:
        release_hold(state_dir, me)


async def _acknowledged(state_dir: Path, within: float, on_wait: Callable[[str], None]) -> None:
    """Until the recorded autoscaler (if one runs) acknowledged the hold, or HoldError."""
    deadline = time.monotonic() + within
    told = False
    while True:
        state = FleetState.load(state_dir)
        autoscaler = state.autoscaler if state is not None else None
        if autoscaler is None or not is_ours(autoscaler.pid, "autoscaler"):
            return
        if state is not None and state.hold and state.hold.acknowledged_by == autoscaler.pid:
            return
        if time.monotonic() > deadline:
            raise HoldError(
                f"the autoscaler (pid {autoscaler.pid}) did not pause within {within:g}s"
                " (a start or drain of its own still under way?); nothing was changed"
            )
        if not told:
            on_wait(f"waiting for the autoscaler (pid {autoscaler.pid}) to pause")
            told = True
        await asyncio.sleep(POLL_SECONDS)


def set_replacing(state_dir: Path, node_id: str | None) -> None:
    """Name the server this process's hold is replacing now (None: none)."""
    me = os.getpid()

    def change(fleet: FleetState) -> None:
        if fleet.hold is not None and fleet.hold.pid == me:
            fleet.hold = dataclasses.replace(fleet.hold, replacing=node_id)

    FleetState.update(state_dir, change)


def release_hold(state_dir: Path, pid: int) -> None:
    """Clear the hold of `pid` (only its own: never another holder's)."""

    def change(fleet: FleetState) -> None:
        if fleet.hold is not None and fleet.hold.pid == pid:
            fleet.hold = None

    with contextlib.suppress(FileNotFoundError):
        FleetState.update(state_dir, change)
