"""iofleet's Engine.IO server (`server.eio.engine`, `server.eio.socket`), from the
inside: what a closed session leaves behind, the heartbeat wheel, the close that a
cancelled caller cannot stop halfway, the outbound bounds, the refusal log."""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from engineio import packet as eio_packet

from bench.fuzz_edge import RecordingTransport
from server.core.lograte import LogLimiter
from server.core.metrics import Metrics
from server.eio.engine import IofleetEngine
from server.eio.heartbeat import HeartbeatWheel
from server.eio.socket import EngineSocket
from server.net.ws_transport import CLOSE_NORMAL, WebSocketConnection, close_frame
from server.settings import Settings
from server.sio.server import IofleetServer
from tests.server.conformance_support import eio_url, open_polling
from tests.support.procs import make_token


def open_socket(engine: IofleetEngine, sid: str = "s1") -> EngineSocket:
    socket = EngineSocket(engine, sid)
    engine.sockets[sid] = socket
    socket.connected = True
    return socket


def test_aiohttp_runner_takes_handler_cancellation() -> None:
    # server.node.app.serve turns it on: a dropped long-poll must cancel its handler.
    import inspect

    assert "handler_cancellation" in inspect.signature(web.AppRunner).parameters or (
        "handler_cancellation" in inspect.signature(web.Server).parameters
    ), "aiohttp no longer accepts handler_cancellation"


async def test_release_leaves_the_wheel_and_the_table() -> None:
    engine = IofleetEngine(ping_interval=30, ping_timeout=30)
    socket = open_socket(engine)
    socket.start_heartbeat()
    assert len(engine.heartbeat) == 1
    await socket.close(wait=False, abort=True, reason=engine.reason.SERVER_DISCONNECT)
    assert len(engine.heartbeat) == 0, "a closed session is still in the heartbeat wheel"
    assert "s1" not in engine.sockets
    assert await socket.poll() == []  # a waiter would wake at once


async def test_the_wheel_pings_then_closes_a_silent_client() -> None:
    engine = IofleetEngine(ping_interval=0.05, ping_timeout=0.05)
    reasons: list[str] = []

    @engine.on("disconnect")
    async def on_disconnect(sid: str, reason: str) -> None:
        reasons.append(reason)

    answering, silent = open_socket(engine, "a"), open_socket(engine, "b")
    for socket in (answering, silent):
        socket.start_heartbeat()
    for _ in range(3):  # three heartbeats: `a` answers each PING, `b` none
        await asyncio.sleep(0.06)
        if answering._take_queued():  # its PING (a polling client's next GET)
            await answering.receive(eio_packet.Packet(eio_packet.PONG))
    for _ in range(20):
        if silent.closed:
            break
        await asyncio.sleep(0.02)
    assert silent.closed and reasons == [engine.reason.PING_TIMEOUT]
    assert not answering.closed
    await answering.close(wait=False, abort=True)
    assert len(engine.heartbeat) == 0


async def test_a_wheel_timer_goes_with_its_last_entry() -> None:
    loop = asyncio.get_running_loop()
    wheel = HeartbeatWheel(0.01)
    beats: list[str] = []

    class Beat:
        def __init__(self, name: str) -> None:
            self.name = name

        def beat(self) -> None:
            beats.append(self.name)

    one, two = Beat("one"), Beat("two")
    before = len(loop._scheduled)  # type: ignore[attr-defined]
    key = wheel.add(one, 0.02)
    assert wheel.add(two, 0.02) == key  # the same tick: one timer for both
    assert len(loop._scheduled) == before + 1  # type: ignore[attr-defined]
    wheel.remove(one, key)
    await asyncio.sleep(0.05)
    assert beats == ["two"]
    key = wheel.add(one, 0.02)
    wheel.remove(one, key)
    assert len(wheel) == 0
    assert sum(not h.cancelled() for h in loop._scheduled) == before  # type: ignore[attr-defined]


async def test_a_cancelled_caller_does_not_stop_the_close_halfway() -> None:
    """aiohttp cancels a request handler when its client drops: the close it was
    running (the disconnect handler, the release) still finishes."""
    engine = IofleetEngine()
    finished: list[str] = []

    @engine.on("disconnect")
    async def on_disconnect(sid: str, reason: str) -> None:
        await asyncio.sleep(0.2)  # an application's cleanup, e.g. a Redis call
        finished.append(sid)

    socket = open_socket(engine)
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
    assert isinstance(engine, IofleetEngine)
    assert (engine.send_buffer_bytes, engine.send_queue_packets) == (2048, 16)
    evicted: list[tuple[str, int]] = []
    engine.slow_consumer_hook = lambda sid, queued: evicted.append((sid, queued))
    socket = open_socket(engine)
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["e"]')
    for _ in range(16):
        assert socket.send_ready(pkt, b"")
    assert evicted == []
    assert not socket.send_ready(pkt, b""), "a 17th queued packet was taken"
    assert evicted == [("s1", 16)]
    await socket.close(wait=False, abort=True)


async def test_a_refused_handshake_leaves_no_session() -> None:
    engine = IofleetEngine()

    @engine.on("connect")
    async def refuse(sid: str, environ: dict[str, Any]) -> bool:
        return False

    socket, verdict = await engine._open_session({"REMOTE_ADDR": "127.0.0.1"}, "polling")
    assert socket is None and verdict is False
    assert engine.sockets == {} and len(engine.heartbeat) == 0


def test_refusal_lines_are_held_to_one_per_interval(caplog: pytest.LogCaptureFixture) -> None:
    now = [0.0]
    limiter = LogLimiter(logging.getLogger("iofleet.test"), 10.0, clock=lambda: now[0])
    with caplog.at_level(logging.INFO, logger="iofleet.test"):
        written = [limiter.warning("refused", {"event": "packet.malformed"}) for _ in range(1000)]
        limiter.warning("refused", {"event": "packet.oversize"})  # another kind: its own line
        now[0] = 10.5
        limiter.warning("refused", {"event": "packet.malformed"})
    assert written.count(True) == 1
    lines = [(r.event, r.suppressed) for r in caplog.records]  # type: ignore[attr-defined]
    assert lines == [("packet.malformed", 0), ("packet.oversize", 0), ("packet.malformed", 999)]


async def test_a_polling_post_of_many_packets_is_read_whole(start_server) -> None:
    """A stock client sends all it buffered in one POST; python-engineio's payload
    decoder refused more than 16 packets (and the CONNECT in it was lost)."""
    server = start_server("manyposts")
    async with aiohttp.ClientSession() as http:
        sid = await open_polling(http, server)
        url = eio_url(server, f"EIO=4&transport=polling&sid={sid}")
        connect = "40" + json.dumps({"token": make_token("batcher")})
        body = "\x1e".join([connect] + ["6"] * 20)  # a CONNECT, then 20 NOOPs
        async with http.post(url, data=body) as response:
            assert response.status == 200
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as response:
            assert response.status == 200
            assert (await response.text()).startswith("40{"), "the CONNECT was not read"


async def test_a_session_closed_mid_upgrade_closes_the_probing_websocket() -> None:
    engine = IofleetEngine()
    socket = open_socket(engine)
    transport = RecordingTransport()
    conn = WebSocketConnection(transport, socket, 4096)
    socket.attach_websocket(conn, b"HTTP/1.1 101 Switching Protocols\r\n\r\n")
    assert socket.upgrading
    await socket.close(wait=False, abort=True, reason=engine.reason.SERVER_DISCONNECT)
    assert not socket.upgrading
    assert transport.written.endswith(close_frame(CLOSE_NORMAL)), "the probe's WebSocket stays open"
    conn.connection_lost(None)


async def test_an_upgrade_to_a_deflating_websocket(start_server) -> None:
    """A polling session upgrades to aiohttp's WebSocket when the client offers
    permessage-deflate (IOFLEET_WS_COMPRESSION): the probe, then packets."""
    server = start_server("deflateup", IOFLEET_WS_COMPRESSION="true")
    async with aiohttp.ClientSession() as http:
        sid = await open_polling(http, server)
        url = eio_url(server, f"EIO=4&transport=polling&sid={sid}")
        ws_url = url.replace("transport=polling", "transport=websocket")
        async with http.ws_connect(ws_url, compress=15) as ws:
            assert ws.compress, "deflate was not negotiated"
            await ws.send_str("2probe")
            assert await ws.receive_str(timeout=3) == "3probe"
            async with http.get(url) as response:  # the pending poll ends with NOOP
                assert await response.text() == "6"
            await ws.send_str("5")
            await ws.send_str("40" + json.dumps({"token": make_token("deflating")}))
            answer = await ws.receive_str(timeout=3)
            while answer == "6":  # the NOOP that ends a poll, had one been pending
                answer = await ws.receive_str(timeout=3)
            assert answer.startswith("40{"), answer
            async with http.get(url) as response:  # polling after the upgrade: 400
                assert response.status == 400
