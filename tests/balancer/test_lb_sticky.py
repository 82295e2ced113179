"""Stickiness through real HAProxy and nginx: three servers, one Redis, official JS clients."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from tests.support.cluster import NODES, Crowd, start_balancer
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess

pytestmark = pytest.mark.parametrize("kind", ["haproxy", "nginx"])
CLIENTS = 30


async def test_polling_clients_from_one_address_spread_and_stay(
    kind: str, servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer(kind, servers, tmp_path)
    try:
        # HAProxy keeps sessions by cookie; nginx by the node id in the sid (no cookies).
        crowd = Crowd(js, balancer.url, cookies=kind == "haproxy")
        names = [f"poll{i}" for i in range(CLIENTS)]
        for name in names:
            await crowd.open(name, transports=["polling"])
        await crowd.wait_connected(names)
        spread = crowd.spread(names)
        # Least connections: all 127.0.0.1, yet every server gets its share.
        assert set(spread) == set(NODES), spread
        assert min(spread.values()) >= 5, spread

        await crowd.join(names, "everyone")
        await js.emit(names[0], "chat:message", {"room": "everyone", "text": "first"})
        await crowd.wait_received(names, "first")

        # Several ping cycles (1 s each): every poll of every session must find its server.
        await asyncio.sleep(4)
        await js.emit(names[-1], "chat:message", {"room": "everyone", "text": "second"})
        await crowd.wait_received(names, "second")
        assert crowd.failures(names) == []
        assert all(len(crowd.hellos(n)) == 1 for n in names)
    finally:
        balancer.stop()


async def test_polling_fails_without_stickiness(
    kind: str, servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer(kind, servers, tmp_path, stickiness="none")
    try:
        crowd = Crowd(js, balancer.url, cookies=False)
        names = [f"loose{i}" for i in range(CLIENTS)]
        for name in names:
            await crowd.open(name, transports=["polling"])

        # Requests of one session land on servers that do not know it: errors, reconnects.
        def failed() -> set[str]:
            return {m["client"] for m in crowd.failures(names)}

        await crowd.until(
            lambda: len(failed()) >= CLIENTS // 2, 20, f"only {len(failed())} clients failed"
        )
    finally:
        balancer.stop()


async def test_websocket_clients_spread(
    kind: str, servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer(kind, servers, tmp_path)
    try:
        crowd = Crowd(js, balancer.url, cookies=kind == "haproxy")
        ws_only = [f"ws{i}" for i in range(CLIENTS // 2)]
        upgrading = [f"up{i}" for i in range(CLIENTS // 2)]
        for name in ws_only:
            await crowd.open(name, transports=["websocket"])
        for name in upgrading:
            await crowd.open(name)  # polling first, then the upgrade request carries the sid
        names = ws_only + upgrading
        await crowd.wait_connected(names)
        await crowd.until(lambda: all(js.seen(n, "upgrade") for n in upgrading), 15, "upgrades")
        for group in (ws_only, upgrading):
            assert set(crowd.spread(group)) == set(NODES), crowd.spread(group)
        assert min(crowd.spread(names).values()) >= 5, crowd.spread(names)

        await crowd.join(names, "everyone")
        await js.emit(ws_only[0], "chat:message", {"room": "everyone", "text": "over ws"})
        await crowd.wait_received(names, "over ws")
        assert crowd.failures(names) == []
    finally:
        balancer.stop()


async def test_address_hashing_piles_one_address_onto_one_server(
    kind: str, servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    """Why address hashing is only the fallback: one NAT (here 127.0.0.1) = one server."""
    stickiness = "source" if kind == "haproxy" else "ip_hash"
    balancer = await start_balancer(kind, servers, tmp_path, stickiness=stickiness)
    try:
        crowd = Crowd(js, balancer.url, cookies=False)
        names = [f"nat{i}" for i in range(10)]
        for name in names:
            await crowd.open(name, transports=["polling"])
        await crowd.wait_connected(names)
        assert len(crowd.spread(names)) == 1, crowd.spread(names)
        assert crowd.failures(names) == []
    finally:
        balancer.stop()
