"""Wiring of the local backend: find the fleet, build source/actuator/controller, serve
the status page, record ourselves in fleet.json, run until cancelled."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
from pathlib import Path
from typing import Any

from aiohttp import web

from autoscaler.controller import Controller, spec_from_settings
from autoscaler.kube.actuator import RefuseToStart
from autoscaler.local.actuator import LocalActuator
from autoscaler.local.levers import HaproxyLever, Lever, NginxLever
from autoscaler.local.source import LocalSource
from autoscaler.settings import Settings
from autoscaler.status import create_status_app
from autoscaler.tasks import stop_tasks
from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import AutoscalerRecord, FleetState
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.server_settings import settings_from_env

log = logging.getLogger("iofleet.autoscaler")
DRAIN_MARGIN_SECONDS = 15.0


def lever_for(state: FleetState, max_servers: int) -> Lever:
    balancer = state.balancer
    if balancer is None:
        raise RefuseToStart("the fleet has no balancer recorded yet")
    if balancer.kind == "haproxy":
        if not balancer.admin_socket or not balancer.backend:
            raise RefuseToStart("the fleet's HAProxy has no runtime API socket")
        return HaproxyLever(HaproxyRuntime(balancer.admin_socket), balancer.backend)
    return NginxLever(Path(balancer.config), max_servers)


def drain_budget(env: dict[str, str]) -> float:
    """How long one server's paced drain may take: the servers' own drain settings."""
    server = settings_from_env(env)
    return server.drain_delay + server.drain_seconds + DRAIN_MARGIN_SECONDS


async def run(settings: Settings, state_dir: Path) -> None:
    state = FleetState.load(state_dir)
    if state is None:
        raise RefuseToStart(f"no fleet recorded in {state_dir} (start it with `iofleet up`)")
    if settings.status_port == 0:
        raise RefuseToStart(
            "the local backend needs a status port (IOFLEET_AUTOSCALER_STATUS_PORT)"
        )
    lever = lever_for(state, settings.max)
    if settings.spare and not isinstance(lever, HaproxyLever):
        # nginx's pool follows every server in fleet.json: a spare would be in rotation.
        raise RefuseToStart(
            "warm spares (IOFLEET_AUTOSCALER_SPARE) need the haproxy balancer: nginx puts "
            "every listed server in its pool"
        )
    # The fleet's Redis too: the servers' settings (recovery on) need its URL to validate.
    redis = {"IOFLEET_REDIS_URL": state.redis.url} if state.redis else {}
    fleet_env = {**os.environ, **load_secrets(state_dir), **redis}
    actuator = LocalActuator(
        state_dir, lever, drain_within=drain_budget(fleet_env), spare=settings.spare
    )
    source = LocalSource(
        state_dir,
        settings.metric,
        settings.scrape_seconds,
        settings.scrape_timeout,
        # Being drained, or replaced under a hold: no sample of the scale decision.
        draining=lambda: actuator.leaving,
    )
    controller = Controller(spec_from_settings(settings), source, actuator, settings.sync_seconds)

    def status() -> dict[str, Any]:
        # The common page, plus what the local fleet did (each start and drain, timed).
        body = controller.status()
        body["fleet_events"] = [dataclasses.asdict(e) for e in actuator.events]
        body["hold"] = dataclasses.asdict(actuator.hold) if actuator.hold else None
        return body

    runner = web.AppRunner(create_status_app(status), access_log=None)
    await runner.setup()
    tasks: list[asyncio.Task[None]] = []
    me = os.getpid()
    try:
        site = web.TCPSite(runner, settings.status_host, settings.status_port)
        await site.start()
        url = f"http://{settings.status_host}:{settings.status_port}/"
        FleetState.update(
            state_dir, lambda fleet: setattr(fleet, "autoscaler", AutoscalerRecord(me, url))
        )
        tasks.append(asyncio.create_task(source.scrape_forever(), name="scrape"))
        tasks.append(asyncio.create_task(actuator.watch_hold(), name="hold"))
        await source.scraped.wait()  # decide only on scraped numbers
        tasks.append(asyncio.create_task(controller.run(), name="control-loop"))
        log.info(
            "local fleet %s: min %d, max %d, target %g, %d warm spare(s), status %s",
            state_dir, settings.min, settings.max, settings.target_connections,
            settings.spare, url,
            extra={"event": "autoscaler.started"},
        )  # fmt: skip
        await asyncio.gather(*tasks)
    finally:
        await stop_tasks(tasks, log)
        await actuator.close()

        def unrecord(fleet: FleetState) -> None:
            if fleet.autoscaler is not None and fleet.autoscaler.pid == me:
                fleet.autoscaler = None

        with contextlib.suppress(FileNotFoundError):
            FleetState.update(state_dir, unrecord)
        await runner.cleanup()
