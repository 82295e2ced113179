"""A tiny HTTP backend for balancer tests that need no Socket.IO server.

It answers `/readyz` (switchable), `/whoami` (its name), refuses handshakes (a request
to `/socket.io/` without `sid`) with 503 when told to, and holds `/hold` requests
open until released, so a test can see sessions in the balancer's stats. Drains are
tested with real servers, never against this stub.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from aiohttp import web

from iofleet.processes import free_port


@dataclass
class StubBackend:
    name: str
    host: str = "127.0.0.1"
    port: int = field(default_factory=free_port)
    admin_port: int = field(default_factory=free_port)
    ready: bool = True
    refuse_handshakes: bool = False
    hits: int = 0
    release: asyncio.Event = field(default_factory=asyncio.Event)
    _runners: list[web.AppRunner] = field(default_factory=list)

    async def start(self) -> StubBackend:
        public = web.Application()
        public.router.add_get("/whoami", self._whoami)
        public.router.add_get("/socket.io/", self._socketio)
        public.router.add_get("/hold", self._hold)
        admin = web.Application()
        admin.router.add_get("/readyz", self._readyz)
        for app, port in ((public, self.port), (admin, self.admin_port)):
            runner = web.AppRunner(app)
            await runner.setup()
            await web.TCPSite(runner, self.host, port).start()
            self._runners.append(runner)
        return self

    async def stop(self) -> None:
        self.release.set()
        for runner in self._runners:
            await runner.cleanup()

    async def _whoami(self, request: web.Request) -> web.Response:
        self.hits += 1
        return web.Response(text=self.name)

    async def _socketio(self, request: web.Request) -> web.Response:
        if self.refuse_handshakes and "sid" not in request.query:
            return web.Response(status=503, text="draining")
        self.hits += 1
        return web.Response(text=self.name)

    async def _hold(self, request: web.Request) -> web.Response:
        await asyncio.wait_for(self.release.wait(), 30)
        return web.Response(text=self.name)

    async def _readyz(self, request: web.Request) -> web.Response:
        return web.Response(status=200 if self.ready else 503)
