"""One running node: the parts every listener shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from server.core.metrics import Metrics
from server.node.drain import DrainController
from server.node.services import AppServices
from server.settings import Settings
from server.sio.cluster.fanout import FanoutManager
from server.sio.server import IofleetServer

FanoutState = Literal["up", "down", "unused"]


@dataclass
class Node:
    settings: Settings
    metrics: Metrics
    sio: IofleetServer
    drain: DrainController
    fanout: FanoutManager | None
    services: AppServices
    started: float = field(default_factory=time.monotonic)

    def fanout_state(self) -> FanoutState:
        if self.fanout is None:
            return "unused"
        return "up" if self.fanout.subscribed else "down"

    def fanout_down_seconds(self) -> float | None:
        """How long the fan-out has been degraded (no Redis subscription); None when up."""
        if self.fanout is None or self.fanout.down_since is None:
            return None
        return round(time.monotonic() - self.fanout.down_since, 1)

    def not_ready_reasons(self) -> list[str]:
        """Why this node should get no new clients; empty when ready.

        Only what is wrong with this node alone: draining, or still starting (the
        first attempt to subscribe to Redis has not finished, so a node that Redis
        serves is subscribed before its first client). A Redis outage is not here:
        every node shares the Redis, and readiness that hinged on it would take
        the whole fleet out of the balancer while each node still serves its rooms.
        A deaf listener is: Redis took this node's heartbeats and counts it
        subscribed, yet it heard none (`server.sio.cluster.fanout`), so its clients miss
        every other node's messages until it hears again.
        """
        reasons = []
        if self.drain.draining:
            reasons.append("draining")
        if self.fanout is not None and not self.fanout.tried:
            reasons.append("starting")
        if self.fanout is not None and self.fanout.deaf_since is not None:
            reasons.append("fan-out deaf")
        return reasons


NODE_KEY = web.AppKey("iofleet_node", Node)
