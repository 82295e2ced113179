"""One running node: the parts every listener shares."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Literal

from aiohttp import web

from server.drain import DrainController
from server.fanout import FanoutManager
from server.metrics import Metrics
from server.services import AppServices
from server.settings import Settings
from server.sio import IofleetServer

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


NODE_KEY = web.AppKey("iofleet_node", Node)
