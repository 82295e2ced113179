"""Regions on loopback (two by default), joined as production joins them: each its own
redis-server and `python -m server` nodes, each its own relay (`python -m relay`),
and on each directed link a delay proxy (70 ms one way, a cut switch) between a
relay and the far region's Redis (`iofleet.regions`)."""

from __future__ import annotations

import json
import os
import tempfile
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from iofleet.regions import (
    DelayProxyProcess,
    RelayProcess,
    links_between,
    region_names,
    relays_for,
)
from tests.server.conftest import py_clients  # noqa: F401  (a fixture these tests use)
from tests.support.procs import RedisServer, ServerProcess, wait_until

ROUTING_APP = "tests.server.routing_app:register"
NODE_ENV = {
    "IOFLEET_HANDLERS": ROUTING_APP,
    "IOFLEET_RATE_LIMIT": "100000",
    "IOFLEET_RECOVERY": "true",
}


# A room stays of interest 3 s after its last member left (production: the recovery
# window), so a test sees a leave take effect, and a client's short drop is covered.
RELAY_ENV = {"IOFLEET_RELAY_INTEREST_LINGER_SECONDS": "3"}


def get_json(url: str) -> Any:
    with urllib.request.urlopen(url, timeout=5) as response:
        return json.loads(response.read())


def post(url: str) -> None:
    urllib.request.urlopen(urllib.request.Request(url, method="POST"), timeout=5).close()


@dataclass
class Region:
    name: str
    redis: RedisServer
    nodes: list[ServerProcess] = field(default_factory=list)
    relay: RelayProcess | None = None

    def start_node(self, suffix: str = "a", **env: str) -> ServerProcess:
        node = ServerProcess(
            f"{self.name}-{suffix}", env={"IOFLEET_REDIS_URL": self.redis.url, **NODE_ENV, **env}
        )
        self.nodes.append(node)
        return node.start()

    def link_status(self, far: str) -> dict[str, Any]:
        assert self.relay is not None
        status = get_json(f"{self.relay.admin_url}/admin/status")
        return next(link for link in status["links"] if link["region"] == far)


@dataclass
class World:
    regions: dict[str, Region]
    links: list[DelayProxyProcess]
    log_dir: Path

    def link(self, source: str, target: str) -> DelayProxyProcess:
        return next(x for x in self.links if (x.source, x.target_region) == (source, target))

    def cut(self, a: str, b: str) -> None:
        for link in (self.link(a, b), self.link(b, a)):
            post(f"{link.control_url}/cut")

    def restore(self, a: str, b: str) -> None:
        for link in (self.link(a, b), self.link(b, a)):
            post(f"{link.control_url}/restore")

    def seen_on_link(self, source: str, target: str, text: str) -> bool:
        link = self.link(source, target)
        return bool(get_json(f"{link.control_url}/seen?text={text}")["seen"])

    def wait_links(self, state: str = "up", within: float = 20) -> None:
        for region in self.regions.values():
            for far in self.regions:
                if far != region.name:
                    wait_until(
                        lambda r=region, f=far: r.link_status(f)["state"] == state,
                        timeout=within,
                        what=f"link {region.name}->{far} {state}",
                    )

    def wait_active(self, region: str, relay: RelayProcess | None = None) -> None:
        """`region`'s relay (or `relay`) holds the region's lease: it forwards."""
        chosen = relay or self.regions[region].relay
        assert chosen is not None
        wait_until(
            lambda: get_json(f"{chosen.admin_url}/admin/status")["leader"],
            timeout=15,
            what=f"{region}'s relay active",
        )

    def wait_nodes(self, source: str, far: str, nodes: int, within: float = 10) -> None:
        """`source`'s relay knows `far` runs `nodes` nodes (their heartbeat channels)."""
        wait_until(
            lambda: self.regions[source].link_status(far)["far_nodes"] == nodes,
            timeout=within,
            what=f"{source} sees {nodes} nodes of {far}",
        )

    def wait_interest(self, source: str, far: str, rooms: int, within: float = 10) -> None:
        """`source`'s relay knows `far` has members in `rooms` rooms."""
        wait_until(
            lambda: self.regions[source].link_status(far)["far_rooms"] == rooms,
            timeout=within,
            what=f"{source} sees {rooms} rooms of {far}",
        )


@pytest.fixture
def world() -> Iterator[World]:
    """Regions r1 and r2 with one node each, relays and links; all stopped after."""
    with running_world(region_names(2)) as running:
        yield running


@contextmanager
def running_world(names: Sequence[str]) -> Iterator[World]:
    """Regions `names` with one node each, a relay each and a link per ordered pair."""
    log_dir = Path(tempfile.mkdtemp(prefix="iofleet-regions-"))
    regions = {name: Region(name, RedisServer()) for name in names}
    ports = {name: region.redis.port for name, region in regions.items()}
    links = links_between(ports)
    relays = relays_for(ports, links, RELAY_ENV)
    try:
        for region in regions.values():
            region.redis.start()
        for link in links:
            link.start(log_dir)
        for region, relay in zip(regions.values(), relays, strict=True):
            region.relay = relay.start(log_dir, os.environ)
            region.start_node()
        world = World(regions, links, log_dir)
        world.wait_links()
        yield world
    finally:
        for region in regions.values():
            for node in region.nodes:
                node.stop()
            if region.relay is not None:
                region.relay.stop()
        for link in links:
            link.stop()
        for region in regions.values():
            region.redis.stop()
