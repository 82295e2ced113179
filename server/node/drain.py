"""The paced graceful drain (DESIGN.md "Drain contract").

1. `start()` (SIGTERM or POST /admin/drain): readiness fails and new handshakes
   are refused with 503 at once. The controller owns the `draining` flag; the
   readiness probe, the public app's handshake gate and the Socket.IO admission
   check ask it (`DrainController.draining`) and never set it.
2. After DRAIN_DELAY, the balancer has deregistered the node: close the open
   connections in jittered batches spread over DRAIN_SECONDS, by closing their
   transports so stock clients reconnect through the balancer elsewhere.
3. `done` is set when no connection is left or the deadline passed; the
   process then exits 0.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Protocol

from server.node.drain_plan import plan_batches

log = logging.getLogger("iofleet.drain")

# After the last batch, how long to wait for the closes to take effect.
SETTLE_SECONDS = 2.0


class Drainable(Protocol):
    @property
    def connections(self) -> Sequence[str] | dict[str, object]: ...

    async def close_connection(self, sid: str) -> bool: ...


class DrainController:
    def __init__(
        self,
        server: Drainable,
        drain_delay: float,
        drain_seconds: float,
        on_state: Callable[[bool], None] = lambda draining: None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
        rng: random.Random | None = None,
    ) -> None:
        self.server = server
        self.drain_delay = drain_delay
        self.drain_seconds = drain_seconds
        self.on_state = on_state
        self.sleep = sleep
        self.clock = clock
        self.rng = rng or random.Random()
        self.done = asyncio.Event()
        self.closed = 0
        self._draining = False
        self._task: asyncio.Task[None] | None = None

    @property
    def draining(self) -> bool:
        """True from `start()` on: this node takes no new connections."""
        return self._draining

    def start(self, trigger: str) -> bool:
        """Begin draining; False if a drain is already under way."""
        if self._draining:
            return False
        self._draining = True
        self.on_state(True)
        log.info(
            "drain started",
            extra={
                "event": "drain.start",
                "trigger": trigger,
                "connections": len(self.server.connections),
                "delay_s": self.drain_delay,
                "window_s": self.drain_seconds,
            },
        )
        self._task = asyncio.create_task(self._run(), name="iofleet-drain")
        return True

    async def wait(self) -> None:
        await self.done.wait()

    async def _run(self) -> None:
        try:
            await self.sleep(self.drain_delay)
            await self._close_in_batches()
            await self._settle()
        except Exception:
            log.exception("drain failed; exiting anyway", extra={"event": "drain.error"})
        finally:
            log.info(
                "drain finished",
                extra={
                    "event": "drain.done",
                    "closed": self.closed,
                    "left": len(self.server.connections),
                },
            )
            self.done.set()

    async def _close_in_batches(self) -> None:
        sids = list(self.server.connections)
        self.rng.shuffle(sids)
        started = self.clock()
        position = 0
        for offset, size in plan_batches(len(sids), self.drain_seconds, self.rng):
            wait = started + offset - self.clock()
            if wait > 0:
                await self.sleep(wait)
            for sid in sids[position : position + size]:
                if await self.server.close_connection(sid):
                    self.closed += 1
            position += size
        # Connections that slipped in (an upgrade in flight) go in a last sweep.
        for sid in list(self.server.connections):
            if await self.server.close_connection(sid):
                self.closed += 1

    async def _settle(self) -> None:
        deadline = self.clock() + SETTLE_SECONDS
        while self.server.connections and self.clock() < deadline:
            await self.sleep(0.05)
