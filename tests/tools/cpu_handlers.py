"""An IOFLEET_HANDLERS app whose event burns CPU on the event loop: a server with a
known, low capacity for `--find-capacity` to find."""

from __future__ import annotations

import time
from typing import Any

import socketio

BURN_SECONDS = 0.02


def register(sio: socketio.AsyncServer) -> None:
    @sio.on("work")
    async def work(sid: str, data: Any = None) -> dict[str, Any]:
        end = time.perf_counter() + BURN_SECONDS
        while time.perf_counter() < end:  # blocks the loop on purpose
            pass
        return {"ok": True}
