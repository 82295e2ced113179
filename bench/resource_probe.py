"""What a Socket.IO server process holds, reported from inside it over one event.

`debug:resources` answers `{tasks, timers, eio_sockets, sio_environ}`. It is never
part of the product: the churn benchmark registers it on the baseline server and
on iofleet (as the IOFLEET_HANDLERS app `bench.resource_probe:chat_with_probe`),
and the release tests load it the same way.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from typing import Any

import socketio

from server.apps import chat

PROBE_EVENT = "debug:resources"
# What the scheduled timers will call: for a failure message that names what is held.
TIMERS_EVENT = "debug:timers"


def resources(sio: socketio.AsyncServer) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    # Scheduled timers: the plain asyncio loop keeps them in `_scheduled`; uvloop has
    # no such list (-1), so whoever counts timers runs the server on the asyncio loop.
    scheduled = getattr(loop, "_scheduled", None)
    timers = -1 if scheduled is None else sum(1 for t in scheduled if not t.cancelled())
    return {
        "tasks": len(asyncio.all_tasks()),
        "timers": timers,
        "eio_sockets": len(sio.eio.sockets),
        "sio_environ": len(sio.environ),
    }


def timer_callbacks() -> dict[str, int]:
    """How many live timers call each function, on the plain asyncio loop (none on uvloop)."""
    scheduled = getattr(asyncio.get_running_loop(), "_scheduled", None) or []
    callbacks = (getattr(t, "_callback", None) for t in scheduled if not t.cancelled())
    return dict(Counter(getattr(c, "__qualname__", repr(c)) for c in callbacks))


def register_probe(sio: socketio.AsyncServer) -> None:
    @sio.on(PROBE_EVENT)
    async def probe(sid: str, data: Any = None) -> dict[str, int]:
        return resources(sio)

    @sio.on(TIMERS_EVENT)
    async def timers(sid: str, data: Any = None) -> dict[str, int]:
        return timer_callbacks()


def chat_with_probe(sio: socketio.AsyncServer) -> None:
    """The bundled chat app plus the probe: an IOFLEET_HANDLERS app for measuring."""
    chat.register(sio)
    register_probe(sio)
