"""Moves the local fleet: starts servers into free balancer slots, drains the emptiest out.

`scale(n)` returns at once: each start and each drain runs as its own task, and
`current_replicas()` counts every server in fleet.json that is neither draining nor a
spare, so the next sync neither starts a server twice nor drains one twice. A server goes
into fleet.json the moment its process exists and leaves it only once it is stopped, so
`iofleet down` always finds it.

Warm spares (`spare`, the local form of the cluster's headroom): servers started and
ready but kept out of the balancer's rotation (their HAProxy slot stays unfilled),
marked `spare` in fleet.json, so an autoscaler started again finds them as spares. A
scale-up puts a ready spare in rotation first - a runtime-API join instead of a process
start - and starts a new spare behind it; every sync tops the spares up.

A hold in fleet.json (`autoscaler.local.hold`, taken by `iofleet restart`) pauses all
of that: no start, promotion or drain while it lasts, `owns_replicas` False so the
control loop decides without acting, and the server being replaced counted out.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import signal
import time
from collections.abc import Coroutine, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autoscaler.kube.actuator import deletion_ranks
from autoscaler.local.hold import observe_hold
from autoscaler.local.levers import Lever, node_number
from autoscaler.local.source import admin_url
from autoscaler.model import Node
from autoscaler.settings import AUTOSCALER_ENV_PREFIX
from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import FleetState, HoldRecord, ServerRecord
from iofleet.local_servers import LocalServer, ServerSpec, start_server
from iofleet.processes import StartError, stop_pid
from iofleet.teardown import is_ours

log = logging.getLogger("iofleet.autoscaler.local.actuator")
EVENTS_KEPT = 200
HOLD_POLL_SECONDS = 0.5
"""How often a hold is read between syncs (a holder waits for our acknowledgement)."""


@dataclass(frozen=True)
class FleetEvent:
    """One step of a scale-up or scale-down, for /status and the benchmark."""

    at: float
    node: str
    kind: str
    """started | in_rotation | start_failed | drain_started | stopped, and for warm spares
    spare_started | spare_ready | promoted (a spare chosen for a scale-up), and held |
    resumed (node "-") when a hold (`iofleet restart`) starts and ends"""
    detail: str = ""


class LocalActuator:
    def __init__(
        self,
        state_dir: Path,
        lever: Lever,
        *,
        drain_within: float,
        start_within: float = 30.0,
        env: Mapping[str, str] | None = None,
        spare: int = 0,
    ) -> None:
        self._state_dir = state_dir
        self._lever = lever
        self._drain_within = drain_within
        self._start_within = start_within
        # Servers inherit the fleet's settings (our environment came from `iofleet up`),
        # not ours, plus the fleet's secrets.
        inherited = os.environ if env is None else env
        self._env = {k: v for k, v in inherited.items() if not k.startswith(AUTOSCALER_ENV_PREFIX)}
        self.draining: set[str] = set()
        self.events: list[FleetEvent] = []
        self._started: dict[str, LocalServer] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._nodes: list[Node] = []
        self._spare = spare
        self._starting: set[str] = set()
        """Node ids handed to a start task that has not finished (claimed slots)."""
        self._spares_starting: set[str] = set()
        self.hold: HoldRecord | None = None
        """The hold in force (`autoscaler.local.hold`), as last observed."""

    @property
    def owns_replicas(self) -> bool:
        # While a hold lasts its holder moves the servers: decide, do not act.
        return self.hold is None

    def _servers(self) -> list[ServerRecord]:
        state = FleetState.load(self._state_dir)
        return state.servers if state is not None else []

    def observe_hold(self) -> HoldRecord | None:
        """Read the hold (acknowledging it once nothing of ours is in flight); logged and
        in the events when it starts and ends."""
        before = self.hold
        self.hold = observe_hold(self._state_dir, os.getpid(), idle=not self._tasks)
        if before is None and self.hold is not None:
            self._event("-", "held", f"pid {self.hold.pid}: {self.hold.reason}")
            log.info(
                "paused: the fleet is held by pid %d (%s)", self.hold.pid, self.hold.reason,
                extra={"event": "local.held"},
            )  # fmt: skip
        elif before is not None and self.hold is None:
            self._reap_replaced()
            self._event("-", "resumed", f"pid {before.pid}: {before.reason}")
            log.info(
                "resumed: the hold of pid %d ended", before.pid, extra={"event": "local.resumed"}
            )
        return self.hold

    def _reap_replaced(self) -> None:
        """Forget (and reap: we are their parent) our servers the holder stopped."""
        recorded = {(s.node_id, s.pid) for s in self._servers()}
        for name, server in list(self._started.items()):
            if (name, server.pid) not in recorded and server.process.poll() is not None:
                del self._started[name]

    async def watch_hold(self, every: float = HOLD_POLL_SECONDS) -> None:
        """Between syncs too: a holder waits for our acknowledgement, not for a sync."""
        while True:
            try:
                self.observe_hold()
            except (OSError, ValueError) as error:  # fleet.json unreadable for a moment
                log.warning("reading the hold failed: %s", error)
            await asyncio.sleep(every)

    @property
    def leaving(self) -> set[str]:
        """Servers on their way out: draining, or being replaced under a hold."""
        replacing = self.hold.replacing if self.hold is not None else None
        return self.draining | ({replacing} if replacing else set())

    def _spares_of(self, servers: Sequence[ServerRecord]) -> set[str]:
        """Spares, ready or starting: not replicas, not scraped, not in rotation."""
        return {s.node_id for s in servers if s.spare} | self._spares_starting

    def _live(self, servers: Sequence[ServerRecord]) -> list[ServerRecord]:
        hidden = self.leaving | self._spares_starting
        return [s for s in servers if not s.spare and s.node_id not in hidden]

    async def current_replicas(self) -> int:
        return len(self._live(self._servers()))

    async def rank(self, nodes: Sequence[Node]) -> None:
        self._nodes = list(nodes)  # the emptiest is picked at scale-down time
        # The controller calls this first in every sync: the hold is read, and the
        # spares are topped up, then.
        if self.observe_hold() is None:
            await self._refill_spares()

    async def _free_names(self, servers: Sequence[ServerRecord], count: int) -> list[str]:
        in_use = {s.node_id for s in servers} | self._starting
        return await self._lever.free_names(in_use, count)

    async def _refill_spares(self) -> None:
        servers = self._servers()
        wanted = self._spare - len(self._spares_of(servers))
        if wanted <= 0:
            return
        names = await self._free_names(servers, wanted)
        if self.hold is not None:  # taken while we asked the balancer
            return
        for name in names:
            self._spares_starting.add(name)
            self._starting.add(name)
            self._spawn(self._start(name, spare=True))

    async def scale(self, replicas: int) -> None:
        if self.hold is not None:
            return  # the control loop does not call this under a hold; belt and braces
        servers = self._servers()
        live = self._live(servers)
        if replicas > len(live):
            missing = replicas - len(live)
            ready = sorted(
                (s for s in servers if s.spare and s.node_id not in self._spares_starting),
                key=lambda s: node_number(s.node_id),
            )
            for record in ready[:missing]:
                self._promote_record(record)
                missing -= 1
            names = await self._free_names(servers, missing) if missing else []
            if len(names) < missing:
                log.warning(
                    "only %d free balancer slots for %d new servers",
                    len(names), missing,
                    extra={"event": "local.no_slot"},
                )  # fmt: skip
            if self.hold is not None:  # taken while we asked the balancer
                return
            for name in names:
                self._starting.add(name)
                self._spawn(self._start(name))
            await self._refill_spares()
        elif replicas < len(live):
            for record in self.pick_emptiest(live, len(live) - replicas):
                self.draining.add(record.node_id)
                self._spawn(self._stop(record))

    def _promote_record(self, record: ServerRecord) -> None:
        """A ready spare becomes a replica (in fleet.json at once) and joins the rotation."""
        promoted = dataclasses.replace(record, spare=False)
        FleetState.update(self._state_dir, lambda fleet: fleet.replace_server(promoted))
        self._event(record.node_id, "promoted", "warm spare")
        self._spawn(self._promote(promoted))

    def pick_emptiest(self, live: Sequence[ServerRecord], count: int) -> list[ServerRecord]:
        """`count` servers, emptiest first (`deletion_ranks` order); a server not yet seen
        by a scrape round serves nobody we know of and goes first."""
        seen = {n.name: n for n in self._nodes}
        candidates = [seen.get(s.node_id, Node(s.node_id, None, ready=False)) for s in live]
        ranks = deletion_ranks(candidates)
        ordered = sorted(live, key=lambda s: ranks[s.node_id])
        return ordered[:count]

    def _spawn(self, coroutine: Coroutine[Any, Any, None]) -> None:
        task = asyncio.create_task(coroutine)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def _event(self, node: str, kind: str, detail: str = "") -> None:
        self.events.append(FleetEvent(time.time(), node, kind, detail))
        del self.events[:-EVENTS_KEPT]

    async def _start(self, name: str, *, spare: bool = False) -> None:
        """Start a server; into rotation, or (a spare) ready and held out of it."""
        try:
            await self._start_server(name, spare)
        finally:
            self._starting.discard(name)
            self._spares_starting.discard(name)

    async def _start_server(self, name: str, spare: bool) -> None:
        state = FleetState.load(self._state_dir)
        if state is None:
            return  # the fleet is stopping
        redis_url = f"redis://127.0.0.1:{state.redis.port}/0" if state.redis else None
        spec = ServerSpec.on_free_ports(name, redis_url)
        env = {**self._env, **load_secrets(self._state_dir)}
        server = start_server(spec, env, Path(state.logs))
        self._started[name] = server
        self._event(name, "spare_started" if spare else "started", f"pid {server.pid}")
        try:
            record = dataclasses.replace(server.record, spare=spare)
            FleetState.update(self._state_dir, lambda fleet: fleet.add_server(record))
            await asyncio.to_thread(server.wait_ready, self._start_within)
            if not spare:
                await self._lever.join(spec, self._start_within)
        except (StartError, TimeoutError, OSError, ValueError, RuntimeError) as error:
            await self._failed(server, error)
            return
        if spare:
            self._event(name, "spare_ready", f"port {spec.port}")
            log.info("spare %s ready, out of rotation", name, extra={"event": "local.spare"})
            return
        self._event(name, "in_rotation", f"port {spec.port}")
        log.info("server %s in rotation", name, extra={"event": "local.started"})

    async def _promote(self, record: ServerRecord) -> None:
        """A ready spare into rotation: no process start, only the balancer's lever."""
        name = record.node_id
        state = FleetState.load(self._state_dir)
        redis_url = state.redis.url if state is not None and state.redis else None
        spec = ServerSpec(name, redis_url, record.port, record.admin_port)
        try:
            await self._lever.join(spec, self._start_within)
        except (TimeoutError, OSError, RuntimeError) as error:
            log.warning(
                "spare %s did not join: %s", name, error, extra={"event": "local.start_failed"}
            )
            self._event(name, "start_failed", str(error).splitlines()[0])
            if is_ours(record.pid, "server"):  # out of rotation, nobody on it
                await asyncio.to_thread(stop_pid, record.pid, 5, signal.SIGINT)
            self._forget(name, record.pid)
            return
        self._event(name, "in_rotation", f"port {spec.port}, warm spare")
        log.info("spare %s in rotation", name, extra={"event": "local.started"})

    async def _failed(self, server: LocalServer, error: Exception) -> None:
        name = server.spec.node_id
        log.warning(
            "server %s did not start: %s", name, error, extra={"event": "local.start_failed"}
        )
        self._event(name, "start_failed", str(error).splitlines()[0])
        await asyncio.to_thread(server.stop, 5)
        self._forget(name, server.pid)

    async def _stop(self, record: ServerRecord) -> None:
        name = record.node_id
        self._event(name, "drain_started")
        started = time.monotonic()
        drained = False
        try:
            token = load_secrets(self._state_dir)["IOFLEET_ADMIN_TOKEN"]
            drained = await self._lever.drain(
                name, admin_url(record), token, within=self._drain_within
            )
        except (OSError, RuntimeError, TimeoutError) as error:
            log.warning(
                "drain of %s failed: %s", name, error, extra={"event": "local.drain_failed"}
            )
        # A drained server exits by itself; whatever is left is stopped by its PID.
        process = self._started.get(name)
        if process is not None and process.pid == record.pid:
            await asyncio.to_thread(stop_pid, record.pid, 10, signal.SIGTERM, process.process)
        elif is_ours(record.pid, "server"):
            await asyncio.to_thread(stop_pid, record.pid, 10, signal.SIGTERM)
        self._forget(name, record.pid)
        self.draining.discard(name)
        took = time.monotonic() - started
        self._event(name, "stopped", f"{took:.2f}s, {'drained' if drained else 'cut'}")
        log.info(
            "server %s drained and stopped in %.2fs", name, took, extra={"event": "local.stopped"}
        )

    def _forget(self, name: str, pid: int) -> None:
        """Out of fleet.json: the record of `name` only while it is still this process."""
        self._started.pop(name, None)

        def remove(fleet: FleetState) -> None:
            if any(s.node_id == name and s.pid == pid for s in fleet.servers):
                fleet.remove_server(name)

        with contextlib.suppress(FileNotFoundError):
            FleetState.update(self._state_dir, remove)

    async def close(self) -> None:
        """Cancel what is under way; fleet.json still lists every server left running."""
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
