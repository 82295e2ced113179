"""A closed connection releases everything at once (issue 13, STYLE.md #13).

After a burst of short-lived connections of each kind, within two seconds the server
holds no task, timer, Engine.IO socket or Socket.IO state for them: counted from
inside the server process by the probe app `bench.resource_probe` (never part of the product),
with the default ping interval (25 s), so nothing may wait for a ping cycle.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import socketio

from bench.resource_probe import PROBE_EVENT, TIMERS_EVENT
from bench.short_lived import KINDS, Endpoint, storm
from tests.support.procs import ServerProcess, make_token

CONNECTIONS_PER_KIND = 30
RELEASE_WITHIN_SECONDS = 2.0


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    node = ServerProcess(
        "release",
        env={
            "IOFLEET_HANDLERS": "bench.resource_probe:chat_with_probe",
            # The plain asyncio loop lists its timers; uvloop does not (see the probe).
            "IOFLEET_UVLOOP": "false",
            "IOFLEET_RATE_LIMIT": "1000",
            "IOFLEET_LOG_LEVEL": "WARNING",
        },
    )
    try:
        node.start()
        yield node
    finally:
        node.stop()


@pytest.fixture
async def probe(server: ServerProcess) -> AsyncIterator[socketio.AsyncClient]:
    client = socketio.AsyncClient()
    await client.connect(
        server.url,
        auth={"token": make_token("probe")},
        transports=["websocket"],
        wait_timeout=10,
    )
    yield client
    await client.disconnect()


async def held(probe: socketio.AsyncClient) -> dict[str, int]:
    reply: dict[str, int] = await probe.call(PROBE_EVENT, timeout=10)
    return reply


async def idle_peak(probe: socketio.AsyncClient, samples: int = 5) -> dict[str, int]:
    """What the idle server holds at most over a few samples. The node's own periodic
    tasks (the loop-lag sampler, Redis link pings) drop their timer for the one loop
    turn between its firing and the task's resuming; a single sample can land there and
    make a steady server look as if it gained a timer later."""
    peak = await held(probe)
    for _ in range(samples - 1):
        await asyncio.sleep(0.05)
        now = await held(probe)
        peak = {key: max(peak[key], now[key]) for key in peak}
    return peak


async def wait_released(
    probe: socketio.AsyncClient, before: dict[str, int], within: float
) -> tuple[dict[str, int], float]:
    """Poll the probe until nothing is held beyond `before`, or `within` seconds pass."""
    started = time.monotonic()
    while True:
        now = await held(probe)
        if all(now[key] <= before[key] for key in before):
            return now, time.monotonic() - started
        if time.monotonic() - started > within:
            return now, time.monotonic() - started
        await asyncio.sleep(0.1)


@pytest.mark.parametrize("kind", list(KINDS))
async def test_short_lived_connections_release_everything(
    kind: str, server: ServerProcess, probe: socketio.AsyncClient
) -> None:
    await asyncio.sleep(0.3)  # the probe's own connection settles
    before = await idle_peak(probe)
    assert before["eio_sockets"] == 1, before  # the probe alone

    endpoint = Endpoint(server.url, auth={"token": make_token(f"churn-{kind}")})
    failures = await storm(endpoint, [kind], CONNECTIONS_PER_KIND, concurrency=10, timeout=60)
    assert failures == 0, f"{failures} of {CONNECTIONS_PER_KIND} {kind} connections failed"

    after, took = await wait_released(probe, before, RELEASE_WITHIN_SECONDS)
    left: dict[str, Any] = {key: after[key] - before[key] for key in before}
    if not all(value <= 0 for value in left.values()):
        timers = await probe.call(TIMERS_EVENT, timeout=10)
        pytest.fail(
            f"{kind}: {RELEASE_WITHIN_SECONDS}s after {CONNECTIONS_PER_KIND} connections "
            f"closed, the server still holds {left} more than before ({before} -> {after}); "
            f"its timers call {timers}"
        )
    print(f"{kind}: released in {took:.2f}s")


SHORT_PING = {"IOFLEET_PING_INTERVAL": "1", "IOFLEET_PING_TIMEOUT": "1"}


async def test_silent_clients_are_released_at_their_ping_timeout(start_server) -> None:
    """Clients that stop answering (no close frame, no FIN: a phone out of coverage)
    are closed at ping interval + ping timeout, and then hold nothing: not the
    WebSocket close handshake, not the long-poll, not a sweep."""
    import aiohttp

    from bench.short_lived import _poll_connect, _ws_connect, _ws_until

    server = start_server(
        "silent",
        IOFLEET_HANDLERS="bench.resource_probe:chat_with_probe",
        IOFLEET_UVLOOP="false",
        **SHORT_PING,
    )
    probe = socketio.AsyncClient()
    await probe.connect(
        server.url, auth={"token": make_token("probe")}, transports=["websocket"], wait_timeout=10
    )
    try:
        await asyncio.sleep(0.3)
        before = await idle_peak(probe)
        endpoint = Endpoint(server.url, auth={"token": make_token("silent")})
        # force_close: an idle HTTP keep-alive connection is the client's to hold
        # (aiohttp keeps a task for it), not a resource of a closed Engine.IO session.
        connector = aiohttp.TCPConnector(force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            silent: list[aiohttp.ClientWebSocketResponse] = []
            for _ in range(10):  # WebSocket: connected, then never reads or answers again
                ws = await _ws_connect(session, endpoint.websocket())
                await _ws_until(ws, "0{")
                await ws.send_str(endpoint.connect_packet())
                await _ws_until(ws, "40")
                silent.append(ws)
            for _ in range(10):  # polling: connected, then never polls again
                await _poll_connect(session, endpoint)
            opened = await held(probe)
            assert opened["eio_sockets"] - before["eio_sockets"] == 20, opened
            # Ping at 1 s, no pong by 2 s: closed; 1 s more at most for a close
            # handshake the peer never answers.
            after, took = await wait_released(probe, before, within=5.0)
            left = {key: after[key] - before[key] for key in before}
            assert all(value <= 0 for value in left.values()), (
                f"silent clients still hold {left} after {took:.1f}s ({before} -> {after})"
            )
            for ws in silent:
                await ws.close()
    finally:
        await probe.disconnect()
