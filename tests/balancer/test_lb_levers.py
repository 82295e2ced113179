"""Balancer levers against real HAProxy and nginx: routing mechanics in front of stub
backends, the whole drain and the runtime add/remove with real servers and JS clients."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Collection
from pathlib import Path

import aiohttp
import pytest

from iofleet.balancers import (
    LocalBalancer,
    haproxy_options,
    nginx_options,
    start_haproxy,
    start_nginx,
)
from iofleet.drain import drain_haproxy_node
from iofleet.haproxy_runtime import HaproxyRuntime, RuntimeApiError
from iofleet.nginx_balancer import NginxBalancer
from iofleet.processes import free_port, pid_alive
from iofleet.readiness import sync_nginx_readiness
from iofleet.render import Backend
from tests.support.cluster import TIMEOUTS, Crowd, start_balancer
from tests.support.cluster import backends as cluster_backends
from tests.support.jsclient import JsClients
from tests.support.procs import TEST_ADMIN_TOKEN, ServerProcess
from tests.support.stub_backend import StubBackend

BACKEND = "iofleet_servers"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"


@pytest.fixture
async def stubs() -> AsyncIterator[list[StubBackend]]:
    backends = [await StubBackend(f"node{i}").start() for i in (1, 2, 3)]
    yield backends
    for backend in backends:
        await backend.stop()


def as_backends(stubs: list[StubBackend]) -> tuple[Backend, ...]:
    return tuple(Backend(s.name, "127.0.0.1", s.port, s.admin_port) for s in stubs)


@pytest.fixture
async def haproxy(stubs: list[StubBackend], tmp_path: Path) -> AsyncIterator[LocalBalancer]:
    options = haproxy_options("127.0.0.1", free_port(), as_backends(stubs), tmp_path)
    # Blocking start in a thread: the stubs answer health checks from this event loop.
    balancer = await asyncio.to_thread(start_haproxy, options, tmp_path)
    yield balancer
    balancer.stop()
    assert not pid_alive(balancer.pid)


@pytest.fixture
async def nginx(stubs: list[StubBackend], tmp_path: Path) -> AsyncIterator[LocalBalancer]:
    options = nginx_options("127.0.0.1", free_port(), as_backends(stubs), tmp_path)
    balancer = await asyncio.to_thread(start_nginx, options, tmp_path)
    yield balancer
    balancer.stop()
    assert not pid_alive(balancer.pid)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No cookie jar: each test sets the cookie it means to send.
    async with aiohttp.ClientSession(
        cookie_jar=aiohttp.DummyCookieJar(), timeout=aiohttp.ClientTimeout(total=10)
    ) as session:
        yield session


async def who(http: aiohttp.ClientSession, url: str, cookie: str | None = None) -> str:
    """Name of the backend that answered (the request must succeed)."""
    headers = {"Cookie": f"iofleet_node={cookie}"} if cookie else {}
    async with http.get(url, headers=headers) as response:
        assert response.status == 200, await response.text()
        return await response.text()


async def names(
    http: aiohttp.ClientSession, url: str, count: int, cookie: str | None = None
) -> list[str]:
    return [await who(http, url, cookie) for _ in range(count)]


async def eventually(check: Callable[[], object], within: float = 10) -> None:
    """Await until `check()` (sync or async) is truthy, bounded in time."""
    deadline = asyncio.get_running_loop().time() + within
    while True:
        result = check()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if asyncio.get_running_loop().time() > deadline:
            raise TimeoutError(f"condition not met within {within}s")
        await asyncio.sleep(0.1)


async def all_up(
    runtime: HaproxyRuntime, up: Collection[str] = ("node1", "node2", "node3")
) -> bool:
    states = {s.name: s.up for s in await runtime.servers_state(BACKEND)}
    return all(states.get(name) for name in up)


async def test_haproxy_lever_drain_ready_maint(
    haproxy: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    runtime = haproxy.runtime()
    await eventually(lambda: all_up(runtime))
    base = haproxy.url

    # New sessions spread (leastconn) and get the cookie of the server that took them.
    async with http.get(f"{base}{HANDSHAKE}") as response:
        owner = await response.text()
        assert response.cookies["iofleet_node"].value == owner
    assert set(await names(http, f"{base}{HANDSHAKE}", 9)) == {"node1", "node2", "node3"}

    await runtime.set_state(BACKEND, "node1", "drain")
    node1 = next(s for s in await runtime.servers_state(BACKEND) if s.name == "node1")
    assert node1.draining and not node1.in_maintenance
    # A handshake never lands on the draining server, even with its cookie.
    assert "node1" not in await names(http, f"{base}{HANDSHAKE}", 9, cookie="node1")
    # Requests of a live session (sid + cookie) still reach it.
    assert set(await names(http, f"{base}{HANDSHAKE}&sid=node1.a", 5, cookie="node1")) == {"node1"}
    # Still so once its health check fails (the server's own drain answers readyz 503).
    stubs[0].ready = False
    await eventually(lambda: all_up(runtime, ["node2", "node3"]))
    await eventually(lambda: _not(all_up(runtime, ["node1"])))
    assert await who(http, f"{base}{HANDSHAKE}&sid=node1.a", cookie="node1") == "node1"

    # Maintenance: no new sessions; `option persist` still lets a session's requests reach
    # the server while it lives (the lever sets maint only once sessions are gone).
    await runtime.set_state(BACKEND, "node1", "maint")
    assert "node1" not in await names(http, f"{base}{HANDSHAKE}", 6, cookie="node1")
    stubs[0].ready = True
    await runtime.set_state(BACKEND, "node1", "ready")
    await eventually(lambda: all_up(runtime))
    assert "node1" in await names(http, f"{base}{HANDSHAKE}", 9)

    # Once the server is gone, a session's requests are redispatched to a live one.
    await stubs[0].stop()
    served = await names(http, f"{base}{HANDSHAKE}&sid=node1.a", 4, cookie="node1")
    assert set(served) <= {"node2", "node3"}

    with pytest.raises(RuntimeApiError):
        await runtime.set_state(BACKEND, "nosuch", "drain")


async def _not(check: object) -> bool:
    assert asyncio.iscoroutine(check)
    return not await check


async def test_haproxy_sessions_and_wait_until_zero(
    haproxy: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    runtime = haproxy.runtime()
    await eventually(lambda: all_up(runtime))
    held = asyncio.create_task(who(http, f"{haproxy.url}/hold?sid=node2.x", cookie="node2"))
    await eventually(lambda: _sessions_are(runtime, "node2", 1))
    assert not await runtime.wait_sessions_zero(BACKEND, "node2", within=0.5, quiet=0.2)
    stubs[1].release.set()
    assert await held == "node2"
    assert await runtime.wait_sessions_zero(BACKEND, "node2", within=5, quiet=0.3)
    rows = await runtime.show_stat()
    assert {r["svname"] for r in rows if r["pxname"] == BACKEND} >= {"node1", "node2", "node3"}


async def _sessions_are(runtime: HaproxyRuntime, server: str, count: int) -> bool:
    return await runtime.sessions(BACKEND, server) == count


async def test_haproxy_retries_handshakes_a_draining_server_refuses(
    haproxy: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    runtime = haproxy.runtime()
    await eventually(lambda: all_up(runtime))
    stubs[0].refuse_handshakes = True  # still "ready": only the 503 retry protects clients
    served = await names(http, f"{haproxy.url}{HANDSHAKE}", 12)
    assert "node1" not in served
    assert set(served) == {"node2", "node3"}


async def test_drain_haproxy_node_moves_real_clients(
    servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    """`iofleet drain`'s HAProxy path: lever, the server's own drain, wait, maintenance."""
    balancer = await start_balancer("haproxy", servers, tmp_path)
    try:
        runtime = balancer.runtime()
        crowd = Crowd(js, balancer.url, cookies=True)
        names = [f"c{i}" for i in range(12)]
        for name in names:
            await crowd.open(name)
        await crowd.wait_connected(names)
        victim = servers[2]
        on_victim = [n for n in names if crowd.node(n) == victim.node_id]
        assert on_victim, crowd.spread(names)

        drained = await drain_haproxy_node(
            runtime, BACKEND, victim.node_id, admin_url=victim.admin_url,
            token=TEST_ADMIN_TOKEN, within=30,
        )  # fmt: skip
        assert drained
        states = {s.name: s for s in await runtime.servers_state(BACKEND)}
        assert states[victim.node_id].in_maintenance
        # Its clients came back by themselves, on the other servers.
        await crowd.until(
            lambda: all(len(crowd.hellos(n)) >= 2 for n in on_victim), 20, "victims back"
        )
        assert victim.node_id not in {crowd.node(n) for n in names}
        # Newcomers never land on it.
        newcomers = [f"new{i}" for i in range(6)]
        for name in newcomers:
            await crowd.open(name)
        await crowd.wait_connected(newcomers)
        assert victim.node_id not in crowd.spread(newcomers)
    finally:
        balancer.stop()


async def test_haproxy_adds_and_removes_a_server_without_reload(
    servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    """The autoscaler's lever: `add server` + `enable`, then `drain` and `remove`."""
    balancer = await start_balancer("haproxy", servers, tmp_path)
    extra = ServerProcess("n4", env=dict(servers[0].env))
    try:
        runtime = balancer.runtime()
        crowd = Crowd(js, balancer.url, cookies=True)
        first = [f"a{i}" for i in range(6)]
        for name in first:
            await crowd.open(name)
        await crowd.wait_connected(first)

        await asyncio.to_thread(extra.start)
        port, admin = extra.port, extra.admin_port
        await runtime.add_server(BACKEND, "n4", "127.0.0.1", port, check_port=admin)
        await runtime.enable(BACKEND, "n4")
        await eventually(lambda: all_up(runtime, ["n4"]))
        # Least connections: the empty newcomer takes the next sessions.
        # WebSocket clients: HAProxy 2.6 gives a dynamic server no sticky cookie.
        second = [f"b{i}" for i in range(3)]
        for name in second:
            await crowd.open(name, transports=["websocket"])
        await crowd.wait_connected(second)
        assert crowd.spread(second).get("n4", 0) >= 2, crowd.spread(second)
        # Its sessions stay on it across several ping cycles.
        await js.emit(second[0], "chat:message", {"room": "none", "text": "x"})
        await asyncio.sleep(2)
        assert all(len(crowd.hellos(n)) == 1 for n in second), crowd.failures(second)

        await runtime.drain(BACKEND, "n4")
        third = [f"c{i}" for i in range(4)]
        for name in third:
            await crowd.open(name)
        await crowd.wait_connected(third)
        assert "n4" not in crowd.spread(third)

        await runtime.remove(BACKEND, "n4")
        assert "n4" not in {s.name for s in await runtime.servers_state(BACKEND)}
        with pytest.raises(RuntimeApiError):
            await runtime.remove(BACKEND, servers[0].node_id)  # named by a use-server rule
    finally:
        balancer.stop()
        extra.stop()


async def test_haproxy_spare_slot_takes_a_new_server_with_sticky_polling(
    servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    """The autoscaler's sticky lever: a spare slot of the config gets the new server."""
    running, newcomer = servers[:2], servers[2]
    options = haproxy_options(
        "127.0.0.1", free_port(), cluster_backends(running), tmp_path,
        timeouts=TIMEOUTS, spare_slots=(newcomer.node_id, "n9"),
    )  # fmt: skip
    balancer = await asyncio.to_thread(start_haproxy, options, tmp_path)
    try:
        runtime = balancer.runtime()
        await eventually(lambda: all_up(runtime, [s.node_id for s in running]))
        states = {s.name: s for s in await runtime.servers_state(BACKEND)}
        assert states[newcomer.node_id].in_maintenance and states["n9"].in_maintenance

        await runtime.fill_slot(
            BACKEND, newcomer.node_id, "127.0.0.1", newcomer.port, check_port=newcomer.admin_port
        )
        await runtime.enable(BACKEND, newcomer.node_id)
        await eventually(lambda: all_up(runtime, [newcomer.node_id]))
        crowd = Crowd(js, balancer.url, cookies=True)
        names = [f"p{i}" for i in range(9)]
        for name in names:
            await crowd.open(name, transports=["polling"])
        await crowd.wait_connected(names)
        assert crowd.spread(names).get(newcomer.node_id, 0) >= 2, crowd.spread(names)
        await asyncio.sleep(3)  # several 1 s ping cycles: every poll finds its server
        assert crowd.failures(names) == []
        assert all(len(crowd.hellos(n)) == 1 for n in names)

        await drain_haproxy_node(
            runtime, BACKEND, newcomer.node_id, admin_url=newcomer.admin_url,
            token=TEST_ADMIN_TOKEN, within=30,
        )  # fmt: skip
        await runtime.free_slot(BACKEND, newcomer.node_id)
        states = {s.name: s for s in await runtime.servers_state(BACKEND)}
        assert states[newcomer.node_id].in_maintenance
    finally:
        balancer.stop()


async def test_nginx_sid_routing_and_lever(
    nginx: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    lever = nginx.nginx_balancer()
    base = nginx.url
    # Every request of a session goes to the node named in its sid.
    for node in ("node1", "node2", "node3"):
        assert set(await names(http, f"{base}{HANDSHAKE}&sid={node}.Ab-_9", 4)) == {node}
    # Handshakes spread by least connections.
    assert set(await names(http, f"{base}{HANDSHAKE}", 9)) == {"node1", "node2", "node3"}

    # A request in flight through an old worker survives the reload.
    held = asyncio.create_task(who(http, f"{base}/hold?sid=node3.x"))
    await eventually(lambda: _workers_ready(lever))
    await asyncio.sleep(0.3)
    old_workers = lever.worker_pids()
    await lever.take_out("node1")
    assert lever.worker_pids() - old_workers
    assert "node1" not in await names(http, f"{base}{HANDSHAKE}", 9)
    assert await who(http, f"{base}{HANDSHAKE}&sid=node1.x") == "node1"
    stubs[2].release.set()
    assert await held == "node3"

    await lever.remove("node1")
    assert "node1" not in await names(http, f"{base}{HANDSHAKE}&sid=node1.x", 6)
    await lever.put_back("node1")
    assert "node1" in await names(http, f"{base}{HANDSHAKE}", 9)
    assert "server 127.0.0.1" in nginx.config_path.read_text()


def _workers_ready(lever: NginxBalancer) -> bool:
    return len(lever.worker_pids()) >= 2


async def test_nginx_readiness_watch_and_refused_handshakes(
    nginx: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    lever = nginx.nginx_balancer()
    base = nginx.url
    pool = as_backends(stubs)
    assert not await sync_nginx_readiness(lever, pool)  # all ready: no reload

    stubs[2].ready = False
    assert await sync_nginx_readiness(lever, pool)
    assert "node3" not in await names(http, f"{base}{HANDSHAKE}", 9)
    # A hand-held server stays out whatever its readiness.
    await lever.take_out("node1")
    stubs[2].ready = True
    assert await sync_nginx_readiness(lever, pool)
    assert set(await names(http, f"{base}{HANDSHAKE}", 9)) == {"node2", "node3"}
    await lever.put_back("node1")

    # A server that refuses handshakes (draining) costs the client nothing: nginx retries.
    stubs[1].refuse_handshakes = True
    served = await names(http, f"{base}{HANDSHAKE}", 12)
    assert "node2" not in served
    assert set(served) == {"node1", "node3"}


async def test_haproxy_runtime_api_over_tcp(stubs: list[StubBackend], tmp_path: Path) -> None:
    port = free_port()
    options = haproxy_options(
        "127.0.0.1",
        free_port(),
        as_backends(stubs),
        tmp_path,
        admin_socket=f"ipv4@127.0.0.1:{port}",
    )
    balancer = await asyncio.to_thread(start_haproxy, options, tmp_path)
    try:
        runtime = balancer.runtime()
        await eventually(lambda: all_up(runtime))
        await runtime.set_state(BACKEND, "node2", "maint")
        states = {s.name: s for s in await runtime.servers_state(BACKEND)}
        assert states["node2"].in_maintenance and not states["node1"].in_maintenance
    finally:
        balancer.stop()


async def test_nginx_pool_follows_the_fleet(
    nginx: LocalBalancer, stubs: list[StubBackend], http: aiohttp.ClientSession
) -> None:
    """The autoscaler's nginx lever: `set_backends` (a graceful reload) adds and removes."""
    pool = nginx.nginx_balancer()
    base = nginx.url
    two = as_backends(stubs)[:2]
    assert await pool.set_backends(two)
    assert set(await names(http, f"{base}{HANDSHAKE}", 9)) == {"node1", "node2"}
    assert await who(http, f"{base}{HANDSHAKE}&sid=node3.x") != "node3"
    assert await sync_nginx_readiness(pool, as_backends(stubs))  # node3 joins
    assert set(await names(http, f"{base}{HANDSHAKE}", 9)) == {"node1", "node2", "node3"}
    assert not await pool.set_backends(as_backends(stubs))  # no change: no reload
