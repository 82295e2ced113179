"""Failures are never silent and cancellation always propagates (issue 10); the
drain flag has one owner and applications get the node's services typed."""

from __future__ import annotations

import asyncio
import logging
import socket
from pathlib import Path
from typing import Any

import pytest
import socketio
from redis import asyncio as aioredis

from iofleet.processes import free_port
from server.apps.matching import Matcher
from server.core.metrics import Metrics
from server.node.app import build_node, shutdown_step
from server.node.services import AppServices, attach, services_of
from server.settings import Settings
from server.sio.cluster.fanout import FanoutManager
from tests.support.procs import RedisServer, ServerProcess

SECRET = "x" * 40


def events(caplog: pytest.LogCaptureFixture) -> list[dict[str, object]]:
    return [vars(r) for r in caplog.records if hasattr(r, "event")]


async def test_a_failed_shutdown_step_is_logged_with_what_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken() -> None:
        raise ConnectionResetError("peer gone")

    with caplog.at_level(logging.WARNING):
        await shutdown_step("the thing", broken())
    (entry,) = events(caplog)
    assert entry["event"] == "shutdown.error" and entry["step"] == "the thing"
    assert entry["error"] == "ConnectionResetError: peer gone"  # not "timed out"


async def test_shutdown_steps_let_cancellation_through() -> None:
    step = asyncio.create_task(shutdown_step("slow", asyncio.sleep(30)))
    await asyncio.sleep(0.05)
    step.cancel()
    with pytest.raises(asyncio.CancelledError):
        await step


async def test_fanout_close_lets_cancellation_through() -> None:
    fanout = FanoutManager(f"redis://127.0.0.1:{free_port()}/0", "iofleet", Metrics())
    closing = asyncio.create_task(fanout._close_quietly("link", asyncio.sleep(30), 10))
    await asyncio.sleep(0.05)
    closing.cancel()
    with pytest.raises(asyncio.CancelledError):
        await closing


async def test_matching_logs_a_redis_failure_on_disconnect(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    sio = socketio.AsyncServer(async_mode="aiohttp")
    nothing_there = f"redis://127.0.0.1:{free_port()}/0"
    redis = aioredis.Redis.from_url(nothing_there, socket_connect_timeout=0.5)
    attach(sio, AppServices(node_id="n", redis=redis))

    async def session(sid: str, namespace: str | None = None) -> dict[str, str]:
        return {"user": "u1"}

    monkeypatch.setattr(sio, "get_session", session)
    matcher = Matcher(sio)
    matcher._involved.add("s1")  # it asked for a match, so its disconnect cleans up
    with caplog.at_level(logging.ERROR):
        await matcher.on_disconnect("s1")
    (entry,) = [e for e in events(caplog) if e["event"] == "match.error"]
    assert entry["operation"] == "disconnect cleanup" and entry["sid"] == "s1"
    assert "ConnectionError" in str(entry["error"])
    await redis.aclose()


def test_applications_get_the_nodes_services(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", SECRET)
    node = build_node(Settings())
    assert services_of(node.sio) is node.services
    assert node.services.node_id == node.settings.node_id
    # The same app on plain python-socketio: empty services, no Redis.
    assert services_of(socketio.AsyncServer()) == AppServices()


def test_the_drain_controller_owns_the_draining_flag(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", SECRET)
    node = build_node(Settings())

    async def start() -> None:
        assert not node.sio.is_draining()
        assert node.drain.start("test")
        assert node.drain.draining and node.sio.is_draining()
        assert not hasattr(node.sio, "draining")  # nobody else keeps a copy
        await asyncio.sleep(0)

    asyncio.run(start())


@pytest.mark.parametrize("taken", ["port", "admin_port"])
def test_a_port_in_use_exits_with_one_line_naming_it(
    start_server: Any, shared_redis: RedisServer, taken: str
) -> None:
    """A server whose port is taken exits 1 at once and says which address; it used
    to hang at exit under uvloop, its fan-out listener ignoring the cancellation."""
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        server: ServerProcess = start_server(
            "squatted",
            wait_ready=False,
            IOFLEET_REDIS_URL=shared_redis.url,
            IOFLEET_AUTH="none",
            **{f"IOFLEET_{taken.upper()}": str(port)},
        )
        assert server.process is not None
        assert server.process.wait(timeout=15) == 1
    (failure,) = [e for e in server.log_entries() if e.get("event") == "server.listen_failed"]
    assert failure["level"] == "error"
    assert f"cannot listen on 127.0.0.1:{port}" in str(failure["msg"])


def test_free_ports_come_from_below_the_ephemeral_range() -> None:
    """Outgoing connections take ephemeral ports; a listener's port chosen there can
    be taken by a client socket before the server binds it (a CI run failed so)."""
    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    ports = {free_port() for _ in range(20)}
    assert all(port < low for port in ports), ports
    assert len(ports) > 1  # chosen at random, not one fixed port
