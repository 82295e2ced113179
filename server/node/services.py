"""What an iofleet node gives applications beyond the python-socketio API.

Applications (`IOFLEET_HANDLERS`, `module:function` called with the
`socketio.AsyncServer`) register their events with the plain python-socketio API.
When they need more from the node, they ask for it here, typed:

    from server.node.services import services_of

    def register(sio: socketio.AsyncServer) -> None:
        services = services_of(sio)
        ...
        redis = services.redis  # at event time: the client exists once the node started

The same app runs unchanged on plain python-socketio: `services_of` then answers
empty services (no Redis), so an app can fall back to in-memory state.
This module imports nothing but `redis`'s types.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass
from typing import Any

from redis.asyncio import Redis
from redis.asyncio.cluster import RedisCluster


@dataclass
class AppServices:
    """The node's shared resources an application may use."""

    node_id: str | None = None
    """This node's id (`IOFLEET_NODE_ID`); None outside iofleet."""
    redis: Redis | RedisCluster | None = None
    """A `redis.asyncio` client (`decode_responses=True`, 2 s timeouts) on `IOFLEET_REDIS_URL`
    (a `RedisCluster` when the URL names a cluster, `redis+cluster://`: keys a command
    or script touches together must then share a hash slot, `{tag}`),
    from the node's start to its shutdown; None when no Redis is configured. The node
    owns it: applications use it and never close it."""


_by_server: weakref.WeakKeyDictionary[Any, AppServices] = weakref.WeakKeyDictionary()


def attach(sio: Any, services: AppServices) -> None:
    """The node's side: make `services` what `services_of(sio)` answers."""
    _by_server[sio] = services


def services_of(sio: Any) -> AppServices:
    """The services of the iofleet node serving `sio` (empty ones on plain python-socketio)."""
    return _by_server.get(sio) or AppServices()
