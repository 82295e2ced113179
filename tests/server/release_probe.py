"""A test-only IOFLEET_HANDLERS app: the bundled chat app plus one event that reports,
from inside the server process, what it holds (tasks, timers, Engine.IO sockets).

Loaded only by tests (`IOFLEET_HANDLERS=tests.server.release_probe:register`), so the
product's public and admin surfaces stay as they are.
"""

from __future__ import annotations

import asyncio
from typing import Any

import socketio

from server.apps import chat

PROBE_EVENT = "debug:resources"


def resources(sio: socketio.AsyncServer) -> dict[str, int]:
    loop = asyncio.get_running_loop()
    # Scheduled timers: the plain asyncio loop keeps them in `_scheduled` (uvloop has no
    # such list, so the tests that count timers run the server on the asyncio loop).
    scheduled = getattr(loop, "_scheduled", None)
    timers = -1 if scheduled is None else sum(1 for t in scheduled if not t.cancelled())
    return {
        "tasks": len(asyncio.all_tasks()),
        "timers": timers,
        "eio_sockets": len(sio.eio.sockets),
        "sio_environ": len(sio.environ),
    }


def register(sio: socketio.AsyncServer) -> None:
    chat.register(sio)

    @sio.on(PROBE_EVENT)
    async def probe(sid: str, data: Any = None) -> dict[str, int]:
        return resources(sio)
