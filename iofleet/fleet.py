"""The local fleet: Redis, N servers and a sticky balancer on this machine (`iofleet up`).

This module only wires the pieces: `local_servers` starts processes, `balancers` runs
HAProxy or nginx, `fleet_state` records everything in `<state dir>/fleet.json` (so
`iofleet down`, another process, can stop it by PID), `fleet_secrets` holds the JWT
secret and admin token. The autoscaler's local backend drives the same pieces.
"""

from __future__ import annotations

import os
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from iofleet.balancers import BalancerKind, LocalBalancer, start_balancer
from iofleet.fleet_secrets import SECRETS_FILE, load_secrets
from iofleet.fleet_state import DEFAULT_STATE_DIR, FleetState
from iofleet.local_servers import (
    HOST,
    LocalRedis,
    LocalServer,
    ServerSpec,
    start_redis,
    start_server,
)
from iofleet.processes import http_status, stop_pid, wait_until
from iofleet.server_settings import balancer_timeouts, settings_from_env
from iofleet.teardown import is_ours
from server.contract import PUBLIC_PORT


@dataclass(frozen=True)
class FleetConfig:
    """What `iofleet up` starts."""

    servers: int = 3
    balancer: BalancerKind = "haproxy"
    port: int = 8080
    """Public port of the balancer on 127.0.0.1."""
    state_dir: Path = DEFAULT_STATE_DIR
    stickiness: str | None = None
    """Balancer stickiness; None = the template default (cookie / sid)."""
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))
    """Environment the servers inherit their `IOFLEET_` settings from."""
    max_servers: int | None = None
    """Most servers the fleet may grow to (the autoscaler's `--max`): HAProxy gets a
    spare slot for each of `node<servers+1>..node<max>`, filled without a reload."""

    warm_spares: int = 0
    """The autoscaler's warm spares (`--spare`): each takes a slot beyond the most
    servers, so a spare stands ready even at `--max`."""

    surge_slots: int = 1
    """HAProxy slots beyond the most servers and spares: `iofleet restart` starts each
    replacement there before the server it replaces drains (HAProxy cannot add a slot
    with a cookie and a sid rule at runtime)."""

    @property
    def spare_slots(self) -> tuple[str, ...]:
        """Node ids of the servers that may start later, in the order they should."""
        top = max(self.max_servers or 0, self.servers) + self.warm_spares + self.surge_slots
        return tuple(f"node{index}" for index in range(self.servers + 1, top + 1))


class Fleet:
    """Starts, records and stops the processes of one local fleet."""

    def __init__(self, config: FleetConfig) -> None:
        self.config = config
        self.state_dir = config.state_dir.resolve()
        self.logs = self.state_dir / "logs"
        self.redis: LocalRedis | None = None
        self.servers: list[LocalServer] = []
        self.balancer: LocalBalancer | None = None
        self.state = FleetState(
            pid=os.getpid(),
            url=f"http://{HOST}:{config.port}/",
            secrets=str(self.state_dir / SECRETS_FILE),
            logs=str(self.logs),
        )

    @property
    def url(self) -> str:
        return self.state.url

    def server_env(self) -> dict[str, str]:
        """What every server inherits: the caller's environment and the fleet's secrets."""
        return {**self.config.env, **load_secrets(self.state_dir)}

    def start(self) -> None:
        """Start everything, recording each process as it starts; stop all on failure."""
        self.logs.mkdir(parents=True, exist_ok=True)
        # The servers' own settings model checks the environment before anything starts
        # (with a stand-in for the Redis URL the fleet's own Redis gets: recovery needs one).
        check = ServerSpec("node1", "redis://127.0.0.1:6379/0", PUBLIC_PORT, 0)
        settings = settings_from_env(check.env(self.server_env()))
        try:
            self.redis = start_redis(self.logs / "redis.log")
            self.state.redis = self.redis.record
            self._save()
            self._start_servers()
            self.balancer = start_balancer(
                self.config.balancer,
                host=HOST,
                port=self.config.port,
                backends=tuple(s.spec.backend for s in self.servers),
                workdir=self.state_dir / "balancer",
                timeouts=balancer_timeouts(settings),
                stickiness=self.config.stickiness,
                spare_slots=self.config.spare_slots,
            )
            self.state.balancer = self.balancer.record
            self._save()
            self.wait_answering()
        except BaseException:
            self.stop()
            raise
        self.state.status = "running"
        self._save()

    def _start_servers(self) -> None:
        assert self.redis is not None
        for index in range(1, self.config.servers + 1):
            spec = ServerSpec.on_free_ports(f"node{index}", self.redis.url)
            server = start_server(spec, self.server_env(), self.logs)
            self.servers.append(server)
            self.state.add_server(server.record)
            self._save()
        for server in self.servers:
            server.wait_ready()

    def wait_answering(self, within: float = 30) -> None:
        """Until the demo page and every server answer through the balancer."""
        wait_until(lambda: http_status(self.url) == 200, within, "the demo page via the balancer")
        for server in self.servers:
            server.wait_ready(within)

    def _save(self) -> None:
        self.state.save(self.state_dir)

    def stop(self) -> None:
        """Stop autoscaler, balancer, servers, Redis, in that order, by PID; forget the fleet.

        Servers someone else added to fleet.json (the autoscaler) are stopped too.
        """
        recorded = FleetState.load(self.state_dir) or self.state
        if recorded.autoscaler is not None and is_ours(recorded.autoscaler.pid, "autoscaler"):
            stop_pid(recorded.autoscaler.pid)
        if self.balancer is not None:
            self.balancer.stop()
        # With the balancer gone nobody is left to drain to: servers stop at once.
        for server in self.servers:
            server.stop()
        ours = {s.pid for s in self.servers}
        for record in recorded.servers:
            if record.pid not in ours and is_ours(record.pid, "server"):
                stop_pid(record.pid, first=signal.SIGINT)
        if self.redis is not None:
            self.redis.stop()
        FleetState.forget(self.state_dir)

    def exited(self) -> list[str]:
        """Names of children that are no longer running (a drained server that left
        fleet.json, `iofleet drain`, is not missed)."""
        recorded = FleetState.load(self.state_dir) or self.state
        listed = {s.node_id for s in recorded.servers}
        children = [(s.spec.node_id, s.process) for s in self.servers if s.spec.node_id in listed]
        if self.redis is not None:
            children.append(("redis", self.redis.process))
        if self.balancer is not None:
            children.append((self.balancer.kind, self.balancer.process))
        return [name for name, process in children if process.poll() is not None]
