"""A Redis outage degrades the fan-out but takes no server out of rotation: through a
real HAProxy (health checks on /readyz), new clients connect while Redis is down, and
cross-node fan-out comes back by itself when Redis returns (issue 9)."""

from __future__ import annotations

import asyncio
import json
import urllib.request
from pathlib import Path

from tests.support.cluster import NODES, Crowd, start_balancer
from tests.support.jsclient import JsClients
from tests.support.procs import RedisServer, ServerProcess

BACKEND = "iofleet_servers"
# HAProxy takes a server out after `fall 2` checks `inter 1s` apart: watch longer than that.
WATCH_SECONDS = 4.0


def fanout_state(server: ServerProcess) -> str:
    with urllib.request.urlopen(f"{server.admin_url}/admin/status", timeout=5) as response:
        return str(json.loads(response.read())["redis"])


async def until_all(servers: list[ServerProcess], state: str, within: float = 15) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not all([await asyncio.to_thread(fanout_state, s) == state for s in servers]):
        assert loop.time() < deadline, f"fan-out not {state} on every server within {within}s"
        await asyncio.sleep(0.1)


async def test_new_clients_connect_through_haproxy_while_redis_is_down(
    servers: list[ServerProcess], redis: RedisServer, js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer("haproxy", servers, tmp_path)
    try:
        crowd = Crowd(js, balancer.url, cookies=True)
        regulars = [f"regular{i}" for i in range(6)]
        for name in regulars:
            await crowd.open(name)
        await crowd.wait_connected(regulars)

        redis.stop()
        await until_all(servers, "down")
        # Every server stays in rotation for longer than HAProxy needs to take one out.
        runtime = balancer.runtime()
        loop = asyncio.get_running_loop()
        watch_until = loop.time() + WATCH_SECONDS
        while loop.time() < watch_until:
            states = await runtime.servers_state(BACKEND)
            down = [s.name for s in states if not s.up]
            assert not down, f"HAProxy took {down} out during the Redis outage"
            await asyncio.sleep(0.2)

        # New users arrive during the outage, polling and WebSocket: all get in.
        newcomers = [f"new{i}" for i in range(12)]
        for i, name in enumerate(newcomers):
            await crowd.open(name, transports=["polling"] if i % 2 else None)
        await crowd.wait_connected(newcomers)
        assert crowd.failures(newcomers) == []
        assert set(crowd.spread(newcomers)) == set(NODES)  # no server was out
        # Each node still serves its own rooms: a room per node, a message in each.
        for node in NODES:
            here = [n for n in newcomers if crowd.node(n) == node]
            await crowd.join(here, f"local-{node}")
            await js.emit(here[0], "chat:message", {"room": f"local-{node}", "text": node})
            await crowd.wait_received(here, node)
        assert crowd.failures(regulars) == []  # nobody already connected was dropped

        # Redis returns on the same port: fan-out across nodes recovers by itself.
        redis.start()
        await until_all(servers, "up")
        everyone = regulars + newcomers
        await crowd.join(everyone, "all")
        await js.emit(newcomers[0], "chat:message", {"room": "all", "text": "back"})
        await crowd.wait_received(everyone, "back")
    finally:
        balancer.stop()
