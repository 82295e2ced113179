"""The python-engineio surface `server.eio.socket` overrides or relies on.

`ReleasingSocket` overrides private methods of `engineio.async_socket.AsyncSocket`
and `ReleasingSockets` relies on how `AsyncServer._handle_connect` registers a new
socket. If an upgrade moves any of it, these fail naming what moved (the versions
this was written against: python-engineio 4.15.1, aiohttp 3.14).
"""

from __future__ import annotations

import asyncio
import inspect

import engineio
import pytest
from aiohttp import web
from engineio import packet as eio_packet
from engineio.async_server import AsyncServer
from engineio.async_socket import AsyncSocket

from server.core.metrics import Metrics
from server.eio.engine import IofleetEngine
from server.eio.socket import ReleasingSocket, ReleasingSockets
from server.settings import Settings
from server.sio.server import IofleetServer

OVERRIDDEN = {
    "schedule_ping": ["self"],
    "poll": ["self"],
    "close": ["self", "wait", "abort", "reason"],
    "_websocket_handler": ["self", "ws"],
}
CALLED = {
    "receive": ["self", "pkt"],
    "send": ["self", "pkt"],
    "check_ping_timeout": ["self"],
    "handle_get_request": ["self", "environ"],
    "_upgrade_websocket": ["self", "environ"],
}


@pytest.mark.parametrize("name", [*OVERRIDDEN, *CALLED])
def test_upstream_socket_methods_keep_their_signature(name: str) -> None:
    method = getattr(AsyncSocket, name, None)
    assert method is not None, f"engineio AsyncSocket.{name} is gone ({engineio.__name__})"
    expected = {**OVERRIDDEN, **CALLED}[name]
    assert list(inspect.signature(method).parameters) == expected, (
        f"engineio AsyncSocket.{name} changed its signature"
    )


def test_overrides_match_upstream_signatures() -> None:
    for name, expected in OVERRIDDEN.items():
        ours = list(inspect.signature(getattr(ReleasingSocket, name)).parameters)
        assert ours == expected, f"ReleasingSocket.{name} no longer matches upstream"


def test_handshake_registers_the_socket_before_using_it() -> None:
    """`ReleasingSockets` adopts a socket when `_handle_connect` stores it in
    `self.sockets`: that must happen before the socket is first used."""
    source = inspect.getsource(AsyncServer._handle_connect)
    created = source.find("async_socket.AsyncSocket(self, sid)")
    registered = source.find("self.sockets[sid] = s")
    first_use = source.find("await s.send(")
    assert created != -1, "AsyncServer._handle_connect no longer creates AsyncSocket(self, sid)"
    assert registered != -1, "AsyncServer._handle_connect no longer registers in self.sockets"
    assert created < registered < first_use, "the socket is used before it is registered"


def test_socket_state_the_release_relies_on() -> None:
    engine = IofleetEngine(async_mode="aiohttp")
    assert isinstance(engine.sockets, ReleasingSockets), "IofleetEngine.sockets is not ours"
    socket = AsyncSocket(engine, "s1")
    engine.sockets["s1"] = socket
    assert type(engine.sockets["s1"]) is ReleasingSocket
    for attribute in ("queue", "last_ping", "connected", "upgraded", "closing", "closed"):
        assert hasattr(socket, attribute), f"engineio sockets lost `{attribute}`"
    for reason in ("PING_TIMEOUT", "TRANSPORT_CLOSE", "CLIENT_DISCONNECT", "SERVER_DISCONNECT"):
        assert hasattr(engine.reason, reason), f"engineio reason.{reason} is gone"


def test_aiohttp_runner_takes_handler_cancellation() -> None:
    # server.node.app.serve turns it on: a dropped long-poll must cancel its handler.
    assert "handler_cancellation" in inspect.signature(web.AppRunner).parameters or (
        "handler_cancellation" in inspect.signature(web.Server).parameters
    ), "aiohttp no longer accepts handler_cancellation"


async def test_release_cancels_timers_and_leaves_the_table() -> None:
    engine = IofleetEngine(async_mode="aiohttp", ping_interval=30, ping_timeout=30)
    engine.sockets["s1"] = AsyncSocket(engine, "s1")
    socket = engine.sockets["s1"]
    socket.schedule_ping()
    timer = socket._ping_timer
    assert timer is not None
    await socket.close(wait=False, abort=True, reason=engine.reason.SERVER_DISCONNECT)
    assert timer.cancelled()
    assert "s1" not in engine.sockets
    assert await socket.poll() == []  # a waiter would wake at once


async def test_a_cancelled_caller_does_not_stop_the_close_halfway() -> None:
    """aiohttp cancels a request handler when its client drops: the close it was
    running (disconnect handlers, release) still finishes."""
    engine = IofleetEngine(async_mode="aiohttp")
    finished: list[str] = []

    @engine.on("disconnect")
    async def on_disconnect(sid: str, reason: str) -> None:
        await asyncio.sleep(0.2)  # an application's cleanup, e.g. a Redis call
        finished.append(sid)

    engine.sockets["s1"] = AsyncSocket(engine, "s1")
    socket = engine.sockets["s1"]
    caller = asyncio.create_task(socket.close(wait=False, abort=True))
    await asyncio.sleep(0.05)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    for _ in range(50):
        if finished:
            break
        await asyncio.sleep(0.02)
    assert finished == ["s1"] and "s1" not in engine.sockets and socket.closed


async def test_the_outbound_bounds_come_from_the_settings() -> None:
    settings = Settings(auth="none", send_buffer_bytes=2048, send_queue_packets=16)
    engine = IofleetServer(settings, Metrics()).eio
    assert (engine.send_buffer_bytes, engine.send_queue_packets) == (2048, 16)
    evicted: list[tuple[str, int]] = []
    engine.slow_consumer_hook = lambda sid, queued: evicted.append((sid, queued))
    engine.sockets["s1"] = AsyncSocket(engine, "s1")
    socket = engine.sockets["s1"]
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["e"]')
    for _ in range(16):
        assert socket.send_ready(pkt, b"")
    assert evicted == []
    assert not socket.send_ready(pkt, b""), "a 17th queued packet was taken"
    assert evicted == [("s1", 16)]
    await socket.close(wait=False, abort=True)
