"""`<state dir>/fleet.json`: what a local fleet runs, for `iofleet down` and the autoscaler.

The `iofleet up` process writes it as it starts things; the autoscaler's local backend
adds and removes servers and records itself under `autoscaler`; `iofleet restart`
records its `hold` (`autoscaler.local.hold`). All change it with `FleetState.update`,
which holds a lock over read-change-write, so none loses another's change. `iofleet
down` stops every recorded PID.
"""

from __future__ import annotations

import contextlib
import dataclasses
import fcntl
import json
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

DEFAULT_STATE_DIR = Path(".iofleet")
"""Where `iofleet up` keeps a fleet unless told otherwise (--state-dir)."""
FLEET_FILE = "fleet.json"
LOCK_FILE = "fleet.lock"

FleetStatus = Literal["starting", "running", "stopping"]


@dataclass(frozen=True)
class ServerRecord:
    node_id: str
    pid: int
    port: int
    admin_port: int
    spare: bool = False
    """A warm spare: started and ready, out of the balancer's rotation, not a replica
    (recorded here, so a restarted autoscaler finds it as a spare, not as a replica)."""


@dataclass(frozen=True)
class BalancerRecord:
    kind: Literal["haproxy", "nginx"]
    pid: int
    port: int
    config: str
    admin_socket: str | None = None
    """HAProxy's runtime API socket (the lever); None for nginx."""
    backend: str | None = None
    """HAProxy backend the servers are in."""


@dataclass(frozen=True)
class RedisRecord:
    pid: int
    port: int

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"


@dataclass(frozen=True)
class AutoscalerRecord:
    pid: int
    status_url: str


@dataclass(frozen=True)
class HoldRecord:
    """Who may start and stop servers right now: while a hold is recorded, its holder
    (`iofleet restart`), not the autoscaler (`autoscaler.local.hold` has the protocol)."""

    pid: int
    """The holder; a hold whose holder is gone is stale and cleared by the autoscaler."""
    reason: str
    acknowledged_by: int | None = None
    """The autoscaler's pid once it has paused, with no start or drain of its own left."""
    replacing: str | None = None
    """The server the holder is replacing now: neither a replica nor a sample any more
    (its replacement is counted in its place)."""


@dataclass
class FleetState:
    """The whole of fleet.json. Field names are its keys (README "Local fleet")."""

    pid: int
    """The `iofleet up` process that owns the fleet."""
    url: str
    secrets: str
    logs: str
    status: FleetStatus = "starting"
    servers: list[ServerRecord] = field(default_factory=list)
    balancer: BalancerRecord | None = None
    redis: RedisRecord | None = None
    autoscaler: AutoscalerRecord | None = None
    hold: HoldRecord | None = None

    def add_server(self, server: ServerRecord) -> None:
        if any(s.node_id == server.node_id for s in self.servers):
            raise ValueError(f"server {server.node_id} is already in the fleet")
        self.servers.append(server)

    def remove_server(self, node_id: str) -> ServerRecord:
        for server in self.servers:
            if server.node_id == node_id:
                self.servers.remove(server)
                return server
        raise KeyError(f"no server {node_id} in the fleet")

    def replace_server(self, server: ServerRecord) -> None:
        """The record of `server.node_id`, changed (a spare put in rotation)."""
        self.servers[self.servers.index(self.server(server.node_id))] = server

    def server(self, node_id: str) -> ServerRecord:
        for server in self.servers:
            if server.node_id == node_id:
                return server
        raise KeyError(f"no server {node_id} in the fleet")

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> FleetState:
        def record(kind: type[Any], value: dict[str, Any] | None) -> Any:
            return None if value is None else kind(**value)

        return cls(
            pid=int(data["pid"]),
            url=data["url"],
            secrets=data["secrets"],
            logs=data["logs"],
            status=data.get("status", "starting"),
            servers=[ServerRecord(**s) for s in data.get("servers", [])],
            balancer=record(BalancerRecord, data.get("balancer")),
            redis=record(RedisRecord, data.get("redis")),
            autoscaler=record(AutoscalerRecord, data.get("autoscaler")),
            hold=record(HoldRecord, data.get("hold")),
        )

    @classmethod
    def load(cls, state_dir: Path) -> FleetState | None:
        """The recorded fleet, None when there is none."""
        path = state_dir / FLEET_FILE
        try:
            text = path.read_text()
        except FileNotFoundError:
            return None
        return cls.from_json(json.loads(text))

    def save(self, state_dir: Path) -> None:
        """Write atomically: a reader sees the old file or the new one, never half of one."""
        path = state_dir / FLEET_FILE
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        temporary.write_text(json.dumps(self.to_json(), indent=2) + "\n")
        os.replace(temporary, path)

    @classmethod
    def update(cls, state_dir: Path, change: Callable[[FleetState], object]) -> FleetState:
        """Load, `change`, save, under a lock shared by every process of the fleet."""
        with _locked(state_dir):
            state = cls.load(state_dir)
            if state is None:
                raise FileNotFoundError(f"no fleet recorded in {state_dir}")
            change(state)
            state.save(state_dir)
            return state

    @staticmethod
    def forget(state_dir: Path) -> None:
        with _locked(state_dir):
            (state_dir / FLEET_FILE).unlink(missing_ok=True)


@contextlib.contextmanager
def _locked(state_dir: Path) -> Iterator[None]:
    state_dir.mkdir(parents=True, exist_ok=True)
    with (state_dir / LOCK_FILE).open("a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)
