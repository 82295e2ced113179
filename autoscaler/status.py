"""The plain-HTTP status listener (`IOFLEET_AUTOSCALER_STATUS_PORT`, loopback by default):
`GET /status` (JSON) and `/` (a page that draws the live chart from that JSON; no CDN)."""

from __future__ import annotations

from collections.abc import Callable
from importlib import resources
from typing import Any

from aiohttp import web

StatusFn = Callable[[], dict[str, Any]]
STATUS_KEY: web.AppKey[StatusFn] = web.AppKey("status")
PAGE = resources.files("autoscaler").joinpath("static/status.html").read_text()


async def status_json(request: web.Request) -> web.Response:
    return web.json_response(request.app[STATUS_KEY]())


async def page(request: web.Request) -> web.Response:
    return web.Response(text=PAGE, content_type="text/html")


def create_status_app(status: Callable[[], dict[str, Any]]) -> web.Application:
    app = web.Application()
    app[STATUS_KEY] = status
    app.router.add_get("/status", status_json)
    app.router.add_get("/", page)
    return app
