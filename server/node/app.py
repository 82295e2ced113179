"""The app factory: builds a node's parts and owns their lifecycles."""

from __future__ import annotations

import asyncio
import importlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import socketio
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from server.core.jsonlog import OncePerBurstFilter
from server.core.metrics import Metrics
from server.net.redis_topology import parse_redis_url
from server.net.ws_accept import PublicSite
from server.node.admin import create_admin_app
from server.node.drain import DrainController
from server.node.public import SOCKETIO_PATH, create_public_app, websocket_connects
from server.node.services import AppServices, attach
from server.node.state import NODE_KEY, Node
from server.settings import Settings
from server.sio.cluster.fanout import FanoutManager
from server.sio.cluster.recovery import RecoveringFanoutManager
from server.sio.server import IofleetServer

log = logging.getLogger("iofleet.app")
# aiohttp's server logger: one ERROR per malformed request, unless folded.
AIOHTTP_SERVER_LOG = logging.getLogger("aiohttp.server")


def is_malformed_request(record: logging.LogRecord) -> bool:
    """aiohttp's record for a request its parser refused (the client's doing)."""
    return bool(record.exc_info) and isinstance(record.exc_info[1], HttpProcessingError)  # type: ignore[index]


LAG_SAMPLE_SECONDS = 0.5
SHUTDOWN_STEP_TIMEOUT = 5.0


def build_node(settings: Settings) -> Node:
    metrics = Metrics()
    fanout = build_fanout(settings, metrics)
    sio = IofleetServer(settings, metrics, client_manager=fanout)
    # Read at scrape time: beside iofleet_connections they show connections that
    # closed but still hold memory (issue 13).
    metrics.engineio_sockets.set_function(lambda: len(sio.eio.sockets))
    metrics.event_loop_tasks.set_function(lambda: len(asyncio.all_tasks()))
    metrics.fanout_up.set(1 if fanout is None else 0)
    drain = DrainController(
        sio,
        drain_delay=settings.drain_delay,
        drain_seconds=settings.drain_seconds,
        on_state=lambda draining: metrics.draining.set(1 if draining else 0),
    )
    sio.is_draining = lambda: drain.draining
    services = AppServices(node_id=settings.node_id)
    attach(sio, services)
    node = Node(
        settings=settings,
        metrics=metrics,
        sio=sio,
        drain=drain,
        fanout=fanout,
        services=services,
    )
    load_handlers(settings.handlers)(sio)
    return node


def build_fanout(settings: Settings, metrics: Metrics) -> FanoutManager | None:
    """The Redis fan-out (with connection state recovery when asked), or None for one node."""
    if not settings.redis_url:
        return None
    common: dict[str, Any] = {
        "outbox_messages": settings.fanout_outbox_messages,
        "outbox_seconds": settings.fanout_outbox_seconds,
        "node_id": settings.node_id,
    }
    if settings.recovery:
        return RecoveringFanoutManager(
            settings.redis_url,
            settings.redis_channel,
            metrics,
            window_seconds=settings.recovery_window_seconds,
            max_messages=settings.recovery_max_messages,
            **common,
        )
    return FanoutManager(settings.redis_url, settings.redis_channel, metrics, **common)


def load_handlers(spec: str) -> Callable[[socketio.AsyncServer], Any]:
    module_name, function_name = spec.split(":")
    register = getattr(importlib.import_module(module_name), function_name)
    if not callable(register):
        raise TypeError(f"IOFLEET_HANDLERS: {spec} is not callable")
    return register  # type: ignore[no-any-return]


def create_app(settings: Settings) -> web.Application:
    """The public application; the admin app hangs off it as `ADMIN_APP_KEY`."""
    node = build_node(settings)
    app = create_public_app(node)
    app.cleanup_ctx.append(redis_client)
    app.on_startup.append(start_manager)
    app.cleanup_ctx.append(event_loop_lag)
    app.on_shutdown.append(close_connections)
    if settings.admin_port:
        app[ADMIN_APP_KEY] = create_admin_app(node)
    return app


ADMIN_APP_KEY = web.AppKey("iofleet_admin_app", web.Application)


async def redis_client(app: web.Application) -> AsyncIterator[None]:
    """The applications' Redis client (`AppServices.redis`), when REDIS_URL is set."""
    node = app[NODE_KEY]
    url = node.settings.redis_url
    if url is not None:
        node.services.redis = parse_redis_url(url).client(
            f"iofleet-{node.settings.node_id}-app",
            socket_connect_timeout=2,
            socket_timeout=2,
            decode_responses=True,
        )
    yield
    client, node.services.redis = node.services.redis, None
    if client is not None:
        await shutdown_step("application redis client close", client.aclose())


async def shutdown_step(what: str, step: Awaitable[object]) -> None:
    """One step of the shutdown, bounded in time. A failure is logged once, naming
    the step and the error, and the shutdown goes on; cancellation propagates."""
    try:
        await asyncio.wait_for(step, SHUTDOWN_STEP_TIMEOUT)
    except TimeoutError:
        log.warning(
            "shutdown step timed out",
            extra={"event": "shutdown.slow", "step": what, "timeout_s": SHUTDOWN_STEP_TIMEOUT},
        )
    except Exception as error:
        log.warning(
            "shutdown step failed",
            extra={
                "event": "shutdown.error",
                "step": what,
                "error": f"{type(error).__name__}: {error}",
            },
        )


async def start_manager(app: web.Application) -> None:
    app[NODE_KEY].sio.start_manager()


async def event_loop_lag(app: web.Application) -> AsyncIterator[None]:
    gauge = app[NODE_KEY].metrics.event_loop_lag

    async def sample() -> None:
        loop = asyncio.get_running_loop()
        while True:
            before = loop.time()
            await asyncio.sleep(LAG_SAMPLE_SECONDS)
            gauge.set(max(0.0, loop.time() - before - LAG_SAMPLE_SECONDS))

    task = asyncio.create_task(sample(), name="iofleet-loop-lag")
    yield
    task.cancel()


async def close_connections(app: web.Application) -> None:
    """On shutdown, close what is left so clients reconnect elsewhere, then stop
    the Socket.IO server and the fan-out without waiting on a Redis that is gone."""
    node = app[NODE_KEY]
    for sid in list(node.sio.connections):
        await node.sio.close_connection(sid)
    await shutdown_step("socket.io shutdown", node.sio.shutdown())
    if node.fanout is not None:
        await node.fanout.close()


class ListenError(RuntimeError):
    """A listener could not bind its address (in use, not permitted, no such address)."""


async def serve(app: web.Application, stop: asyncio.Event) -> None:
    """Run both listeners until the drain finishes or `stop` is set."""
    node = app[NODE_KEY]
    settings = node.settings
    # handler_cancellation: a long-poll whose client dropped the connection is
    # cancelled at once, so its Engine.IO socket closes then (server/eio/socket.py)
    # instead of waiting out its timeout.
    public_runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=SHUTDOWN_STEP_TIMEOUT,
        handler_cancellation=True,
        keepalive_timeout=settings.keepalive_timeout,
    )
    runners = [public_runner]

    def public_site(runner: web.AppRunner) -> web.BaseSite:
        connects = websocket_connects(node)
        return PublicSite(
            runner,
            settings.host,
            settings.port,
            SOCKETIO_PATH,
            connects,
            head_timeout=settings.head_timeout,
            backlog=settings.listen_backlog,
        )

    def admin_site(runner: web.AppRunner) -> web.BaseSite:
        return web.TCPSite(runner, settings.admin_bind, settings.admin_port)

    # (runner, its site once the runner is set up, the address for errors)
    listeners: list[tuple[web.AppRunner, Callable[[web.AppRunner], web.BaseSite], str]] = [
        (public_runner, public_site, f"{settings.host}:{settings.port}")
    ]
    if ADMIN_APP_KEY in app:
        admin_runner = web.AppRunner(app[ADMIN_APP_KEY], access_log=None, shutdown_timeout=1)
        runners.append(admin_runner)
        listeners.append((admin_runner, admin_site, f"{settings.admin_bind}:{settings.admin_port}"))
    waiters: set[asyncio.Task[object]] = set()
    started = time.monotonic()
    malformed = OncePerBurstFilter("http.malformed_request", is_malformed_request)
    AIOHTTP_SERVER_LOG.addFilter(malformed)
    try:
        for runner, make_site, address in listeners:
            await runner.setup()
            try:
                await make_site(runner).start()
            except OSError as error:
                raise ListenError(f"cannot listen on {address}: {error.strerror}") from error
        log.info(
            "listening",
            extra={
                "event": "server.start",
                "port": settings.port,
                "admin_port": settings.admin_port,
                "redis": node.fanout_state(),
                "auth": settings.auth,
            },
        )
        waiters = {asyncio.create_task(node.drain.wait()), asyncio.create_task(stop.wait())}
        await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for waiter in waiters:
            waiter.cancel()
        # Public first (closes sockets), admin last (a `?wait=true` drain call gets its answer).
        # Also after a failed start: the fan-out listener already runs and must stop.
        for runner in runners:
            await runner.cleanup()
        AIOHTTP_SERVER_LOG.removeFilter(malformed)
        log.info(
            "stopped",
            extra={"event": "server.stop", "uptime_s": round(time.monotonic() - started, 1)},
        )
