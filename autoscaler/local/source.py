"""The local fleet's servers as nodes: fleet.json lists them, each admin port answers
`/readyz` and `/metrics` (`iofleet_connections`), probed concurrently every interval."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Collection, Sequence
from dataclasses import replace
from pathlib import Path

import aiohttp

from autoscaler.model import Node
from autoscaler.scrape import scrape_all
from iofleet.fleet_state import FleetState, ServerRecord
from iofleet.local_servers import HOST

log = logging.getLogger("iofleet.autoscaler.local.source")


def admin_url(server: ServerRecord) -> str:
    return f"http://{HOST}:{server.admin_port}"


async def answers_ready(session: aiohttp.ClientSession, url: str, timeout: float) -> bool:
    """The server's /readyz answers 200 within `timeout`."""
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=timeout)) as response:
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


class LocalSource:
    """Keeps `nodes()` fresh: one round (fleet.json, /readyz, /metrics) per interval."""

    def __init__(
        self,
        state_dir: Path,
        metric: str,
        scrape_interval: float,
        scrape_timeout: float,
        draining: Callable[[], Collection[str]],
    ) -> None:
        self._state_dir = state_dir
        self._metric = metric
        self._scrape_interval = scrape_interval
        self._scrape_timeout = scrape_timeout
        self._draining = draining
        self._nodes: list[Node] = []
        self.scraped = asyncio.Event()

    @property
    def scrape_interval(self) -> float:
        return self._scrape_interval

    def nodes(self) -> Sequence[Node]:
        # Draining is the actuator's live knowledge, newer than the last round.
        draining = self._draining()
        return [replace(n, deleting=n.deleting or n.name in draining) for n in self._nodes]

    async def scrape_once(self, session: aiohttp.ClientSession) -> None:
        state = FleetState.load(self._state_dir)
        # Warm spares serve nobody and are no replicas: not scraped, not counted.
        servers = [s for s in state.servers if not s.spare] if state else []
        urls = {s.node_id: f"{admin_url(s)}/metrics" for s in servers}
        ready, scrapes = await asyncio.gather(
            asyncio.gather(
                *(answers_ready(session, f"{admin_url(s)}/readyz", self._scrape_timeout)
                  for s in servers)
            ),
            scrape_all(session, urls, self._metric, self._scrape_timeout),
        )  # fmt: skip
        now = time.time()
        self._nodes = [
            Node(
                name=server.node_id,
                address=admin_url(server),
                ready=is_ready,
                connections=scrapes[server.node_id].value,
                scraped_at=now if scrapes[server.node_id].value is not None else None,
                error=scrapes[server.node_id].error,
            )
            for server, is_ready in zip(servers, ready, strict=True)
        ]
        self.scraped.set()

    async def scrape_forever(self) -> None:
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                try:
                    await self.scrape_once(session)
                except (OSError, ValueError) as error:  # fleet.json unreadable for a moment
                    log.warning("scrape round failed: %s", error)
                elapsed = time.monotonic() - started
                await asyncio.sleep(max(0.0, self._scrape_interval - elapsed))
