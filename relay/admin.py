"""The relay's admin listener: `/healthz`, `/readyz` (its region's Redis answers,
whether this replica is the active one or the standby; a far region down is not a
readiness failure: the relay is what holds its messages), `/metrics` and
`/admin/status` (each link: state, lag, held messages)."""

from __future__ import annotations

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from relay.relay import Relay

RELAY_KEY = web.AppKey("relay", Relay)


def create_admin_app(relay: Relay) -> web.Application:
    app = web.Application()
    app[RELAY_KEY] = relay
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    relay = request.app[RELAY_KEY]
    ready = relay.ready()
    body = {"ready": ready, "leader": relay.leader, "local": relay.local_up}
    return web.json_response(body, status=200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    relay = request.app[RELAY_KEY]
    for link in relay.links:  # the lag ages while nothing moves: refreshed when read
        relay.metrics.lag.labels(link=link.name).set(link.status()["lag_s"])
    body = generate_latest(relay.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    return web.json_response(request.app[RELAY_KEY].status())
