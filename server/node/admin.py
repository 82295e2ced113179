"""The admin listener: health, readiness, metrics, status and the drain lever.

It runs on its own port, never behind the public balancer.
"""

from __future__ import annotations

import asyncio
import hmac
import time
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from server.node.region_links import read_links
from server.node.state import NODE_KEY, Node


def create_admin_app(node: Node) -> web.Application:
    app = web.Application()
    app[NODE_KEY] = node
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/admin/status", status)
    app.router.add_post("/admin/drain", drain)
    return app


async def healthz(request: web.Request) -> web.Response:
    return web.json_response({"ok": True})


async def readyz(request: web.Request) -> web.Response:
    """200 unless this node itself should get no new clients (draining, starting);
    a Redis outage degrades the fan-out but leaves the node ready."""
    node = request.app[NODE_KEY]
    reasons = node.not_ready_reasons()
    body = {
        "ready": not reasons,
        "reasons": reasons,
        "draining": node.drain.draining,
        "redis": node.fanout_state(),
    }
    return web.json_response(body, status=503 if reasons else 200)


async def metrics(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    node.metrics.rooms.set(node.sio.room_count())
    body = generate_latest(node.metrics.registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


async def status(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    return web.json_response(
        {
            "node_id": node.settings.node_id,
            "connections": len(node.sio.connections),
            "rooms": node.sio.room_count(),
            "draining": node.drain.draining,
            "uptime_s": round(time.monotonic() - node.started, 1),
            "redis": node.fanout_state(),
            "fanout_down_s": node.fanout_down_seconds(),
            "region_links": await region_links(node),
        }
    )


async def region_links(node: Node) -> dict[str, Any]:
    """The links to far regions, as this region's relay last wrote them (bounded wait)."""
    if node.fanout is None:
        return {"state": "unused"}  # one node, no Redis: no region to link
    return await read_links(node.fanout.redis, node.settings.redis_channel)


async def drain(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    accepted = node.settings.admin_tokens
    if not accepted:
        return web.json_response({"error": "IOFLEET_ADMIN_TOKEN is not set"}, status=403)
    given = request.headers.get("Authorization", "").removeprefix("Bearer ").strip().encode()
    # Every accepted token is compared (no early exit), in constant time each.
    matches = [hmac.compare_digest(given, token.encode()) for token in accepted]
    if not any(matches):
        return web.json_response({"error": "bad admin token"}, status=401)
    started = node.drain.start("admin")
    if request.query.get("wait", "").lower() in ("1", "true", "yes"):
        # Shielded: a preStop hook that gives up must not cancel the drain.
        await asyncio.shield(node.drain.wait())
    return web.json_response(
        {
            "draining": True,
            "already_draining": not started,
            "done": node.drain.done.is_set(),
            "connections": len(node.sio.connections),
        },
        status=202 if not node.drain.done.is_set() else 200,
    )
