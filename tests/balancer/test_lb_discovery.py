"""The in-cluster HAProxy config: servers found by DNS (a headless Service's A records)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import aiohttp
import pytest

from iofleet.balancers import LocalBalancer, start_haproxy
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.processes import free_port
from iofleet.render import DnsDiscovery, HaproxyOptions
from tests.support.dns_stub import DnsStub
from tests.support.stub_backend import StubBackend

SERVICE = "iofleet-server.iofleet.svc.cluster.local"
HANDSHAKE = "/socket.io/?EIO=4&transport=polling"
# Pod addresses: distinct loopback addresses (all of 127/8 is local on Linux).
PODS = ["127.0.0.2", "127.0.0.3", "127.0.0.4"]


@pytest.fixture
async def pods() -> AsyncIterator[list[StubBackend]]:
    # Like pods of one Deployment: same ports, different addresses.
    port, admin_port = free_port(), free_port()
    stubs = [
        await StubBackend(f"pod{i}", host=ip, port=port, admin_port=admin_port).start()
        for i, ip in enumerate(PODS)
    ]
    yield stubs
    for stub in stubs:
        await stub.stop()


@pytest.fixture
async def dns() -> AsyncIterator[DnsStub]:
    stub = await DnsStub(SERVICE, PODS[:2]).start()
    yield stub
    stub.stop()


async def up_addresses(runtime: HaproxyRuntime) -> set[str]:
    states = await runtime.servers_state("iofleet_servers")
    return {s.address for s in states if s.up and not s.in_maintenance}


async def wait_addresses(runtime: HaproxyRuntime, expected: set[str], within: float = 15) -> None:
    for _ in range(int(within * 10)):
        if await up_addresses(runtime) == expected:
            return
        await asyncio.sleep(0.1)
    raise TimeoutError(f"HAProxy has {await up_addresses(runtime)}, not {expected}")


async def served(http: aiohttp.ClientSession, url: str, count: int, **headers: str) -> list[str]:
    names = []
    for _ in range(count):
        async with http.get(url, headers=headers) as response:
            assert response.status == 200
            names.append(await response.text())
    return names


@pytest.fixture
async def haproxy(
    pods: list[StubBackend], dns: DnsStub, tmp_path: Path
) -> AsyncIterator[LocalBalancer]:
    options = HaproxyOptions(
        listen=f"127.0.0.1:{free_port()}",
        discovery=DnsDiscovery(
            hostname=SERVICE,
            port=pods[0].port,
            admin_port=pods[0].admin_port,
            slots=5,
            nameservers=(f"127.0.0.1:{dns.port}",),
            hold_valid_s=1,
        ),
        admin_socket=str(tmp_path / "haproxy.sock"),
        maxconn=1000,
    )
    balancer = await asyncio.to_thread(start_haproxy, options, tmp_path)
    yield balancer
    balancer.stop()


async def test_dns_discovery_follows_pods_and_keeps_sessions(
    haproxy: LocalBalancer, pods: list[StubBackend], dns: DnsStub
) -> None:
    runtime = haproxy.runtime()
    await wait_addresses(runtime, set(PODS[:2]))
    url = f"{haproxy.url}{HANDSHAKE}"
    async with aiohttp.ClientSession(cookie_jar=aiohttp.DummyCookieJar()) as http:
        assert set(await served(http, url, 6)) == {"pod0", "pod1"}

        # The dynamic cookie (derived from the pod address) keeps a session on its pod.
        async with http.get(url) as response:
            owner = await response.text()
            cookie = response.cookies["iofleet_node"].value
        session = f"{url}&sid=x.1"
        assert set(await served(http, session, 6, Cookie=f"iofleet_node={cookie}")) == {owner}

        # Scale up: a new record gets a free slot and new sessions.
        dns.addresses = PODS[:3]
        await wait_addresses(runtime, set(PODS))
        assert "pod2" in await served(http, url, 9)

        # Scale down: the record goes away, and so does the server.
        dns.addresses = PODS[1:3]
        await wait_addresses(runtime, set(PODS[1:3]))
        assert "pod0" not in await served(http, url, 9)
    assert dns.queries > 0
