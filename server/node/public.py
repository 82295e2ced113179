"""The public listener: /socket.io/, guest tokens and the demo page."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from aiohttp.typedefs import Handler

from server.core.ratelimit import KeyedBuckets
from server.net.ws_accept import WebSocketConnectHandler
from server.node.state import NODE_KEY, Node
from server.sio.auth import GuestTokenIssuer

log = logging.getLogger("iofleet.public")

STATIC_DIR = Path(__file__).parents[1] / "static"  # server/static
SOCKETIO_PATH = "/socket.io/"
GUEST_KEY = web.AppKey("iofleet_guest", GuestTokenIssuer)
GUEST_BUCKETS_KEY = web.AppKey("iofleet_guest_buckets", KeyedBuckets)


def create_public_app(node: Node) -> web.Application:
    app = web.Application(middlewares=[handshake_gate])
    app[NODE_KEY] = node
    node.sio.attach(app, socketio_path=SOCKETIO_PATH.strip("/"))
    if node.settings.guest_tokens:
        app[GUEST_KEY] = GuestTokenIssuer(node.settings)
        per_minute = node.settings.guest_rate_per_minute
        app[GUEST_BUCKETS_KEY] = KeyedBuckets(rate=per_minute / 60, burst=max(1.0, per_minute / 2))
        app.router.add_post("/auth/guest", guest_token)
    app.router.add_get("/", demo_page)
    app.router.add_static("/static/", STATIC_DIR, show_index=False)
    return app


def websocket_connects(node: Node) -> WebSocketConnectHandler:
    """What the public listener does with a WebSocket connect read before aiohttp
    (`server.net.ws_accept`): the Engine.IO server takes it, unless the node is
    draining (then aiohttp's path answers 503, `handshake_gate`)."""

    def on_websocket_connect(environ: dict[str, Any], transport: asyncio.Transport) -> bool:
        return not node.drain.draining and node.sio.eio.open_websocket(environ, transport)

    return on_websocket_connect


def client_ip(request: web.Request, trust_proxy_headers: bool) -> str:
    if trust_proxy_headers:
        # Our balancer appends the address it saw; earlier entries are client-supplied.
        # HAProxy adds its own X-Forwarded-For line after any the client sent, so
        # every line counts, in order (one `get` would read the client's line).
        forwarded = ",".join(request.headers.getall("X-Forwarded-For", ()))
        hops = [hop.strip() for hop in forwarded.split(",") if hop.strip()]
        if hops:
            return hops[-1]
    return request.remote or "unknown"


@web.middleware
async def handshake_gate(request: web.Request, handler: Handler) -> web.StreamResponse:
    """Refuse new handshakes with 503 while draining; note oversize polling posts.

    A 503 on the handshake (a request without `sid`) is what makes stock clients
    retry, and the retry goes through the balancer to another node. Refusing
    in the Socket.IO connect handler instead would give a connect_error that
    stock clients do not retry.
    """
    if request.path.startswith(SOCKETIO_PATH):
        node = request.app[NODE_KEY]
        if node.drain.draining and "sid" not in request.query:
            node.metrics.connections_rejected.labels("draining").inc()
            return web.json_response({"error": "server draining"}, status=503)
        length = request.content_length
        if request.method == "POST" and length and length > node.settings.max_message_bytes:
            node.metrics.events_rejected.labels("oversize").inc()
            log.warning(
                "packet refused; closing the sender's transport",
                extra={
                    "event": "packet.oversize",
                    "detail": f"polling body of {length} bytes, "
                    f"over {node.settings.max_message_bytes}",
                    "eio_sid": request.query.get("sid"),
                },
            )
    return await handler(request)


async def guest_token(request: web.Request) -> web.Response:
    node = request.app[NODE_KEY]
    ip = client_ip(request, node.settings.trust_proxy_headers)
    if not request.app[GUEST_BUCKETS_KEY].take(ip):
        node.metrics.connections_rejected.labels("guest_rate").inc()
        return web.json_response(
            {"error": "too many guest tokens from this address"},
            status=429,
            headers={"Retry-After": "60"},
        )
    token, user = request.app[GUEST_KEY].issue()
    log.info("guest token issued", extra={"event": "auth.guest", "user": user})
    return web.json_response(
        {"token": token, "user": user, "expires_in": node.settings.guest_token_ttl},
        headers={"Cache-Control": "no-store"},
    )


async def demo_page(request: web.Request) -> web.FileResponse:
    return web.FileResponse(STATIC_DIR / "index.html")
