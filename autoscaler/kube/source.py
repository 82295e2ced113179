"""The server pods, watched by label selector, and their connection counts, scraped
from each ready pod's admin port (`http://<podIP>:<admin port>/metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import aiohttp
from lightkube import AsyncClient
from lightkube.resources.core_v1 import Pod

from autoscaler.model import Node
from autoscaler.scrape import scrape_all

log = logging.getLogger("iofleet.autoscaler.source")

DELETION_COST = "controller.kubernetes.io/pod-deletion-cost"
MAX_BACKOFF_SECONDS = 30.0


@dataclass(frozen=True)
class PodView:
    """What the autoscaler needs from a Pod object."""

    name: str
    ip: str | None
    ready: bool
    deleting: bool
    labels: Mapping[str, str]
    deletion_cost: int | None


def pod_view(pod: Pod) -> PodView:
    meta, status = pod.metadata, pod.status
    assert meta is not None and meta.name is not None
    conditions = (status.conditions if status else None) or []
    ready = any(c.type == "Ready" and c.status == "True" for c in conditions)
    phase = status.phase if status else None
    cost_text = (meta.annotations or {}).get(DELETION_COST)
    try:
        cost = int(cost_text) if cost_text is not None else None
    except ValueError:
        cost = None
    return PodView(
        name=meta.name,
        ip=status.podIP if status else None,
        ready=ready and phase == "Running",
        deleting=meta.deletionTimestamp is not None or phase in ("Failed", "Succeeded"),
        labels=dict(meta.labels or {}),
        deletion_cost=cost,
    )


class KubernetesSource:
    """Keeps `nodes()` fresh: a watch on the pods, a scrape round every interval."""

    def __init__(
        self,
        client: AsyncClient,
        namespace: str,
        labels: Mapping[str, str],
        admin_port: int,
        metric: str,
        scrape_interval: float,
        scrape_timeout: float,
    ) -> None:
        self._client = client
        self._namespace = namespace
        self._labels: dict[str, Any] = dict(labels)  # lightkube's selector type
        self._admin_port = admin_port
        self._metric = metric
        self._scrape_interval = scrape_interval
        self._scrape_timeout = scrape_timeout
        self._pods: dict[str, PodView] = {}
        self._nodes: dict[str, Node] = {}
        self.synced = asyncio.Event()
        """Set once the first list of pods has arrived."""
        self.last_round: float | None = None
        self.rounds = 0
        self.scraped = asyncio.Event()
        """Set after the first scrape round (before it, every pod looks missing)."""

    @property
    def scrape_interval(self) -> float:
        return self._scrape_interval

    def nodes(self) -> Sequence[Node]:
        return [self._node(view) for view in self._pods.values()]

    def _node(self, view: PodView) -> Node:
        seen = self._nodes.get(view.name)
        base = Node(
            name=view.name,
            address=view.ip,
            ready=view.ready,
            deleting=view.deleting,
            deletion_cost=view.deletion_cost,
            labels=view.labels,
        )
        if seen is None:
            return base
        return replace(base, connections=seen.connections, scraped_at=seen.scraped_at,
                       error=seen.error)  # fmt: skip

    def _matches(self, view: PodView) -> bool:
        # The API filters by labelSelector; checking again keeps a stray event out.
        return all(view.labels.get(k) == v for k, v in self._labels.items())

    def _apply(self, event: str, pod: Pod) -> None:
        view = pod_view(pod)
        if event == "DELETED" or not self._matches(view):
            self._pods.pop(view.name, None)
            self._nodes.pop(view.name, None)
        else:
            self._pods[view.name] = view

    async def watch_pods(self) -> None:
        """List, then watch from the list's version; on any error start again, with capped
        exponential backoff, from a fresh list (so pods deleted meanwhile go)."""
        delay = 1.0
        while True:
            try:
                listing = self._client.list(Pod, namespace=self._namespace, labels=self._labels)
                pods = {pod_view(p).name: p async for p in listing}
                self._pods = {}
                for pod in pods.values():
                    self._apply("ADDED", pod)
                self.synced.set()
                version = None
                with contextlib.suppress(Exception):
                    version = listing.resourceVersion
                delay = 1.0
                async for event, pod in self._client.watch(
                    Pod,
                    namespace=self._namespace,
                    labels=self._labels,
                    resource_version=version,
                ):
                    self._apply(event, pod)
            except asyncio.CancelledError:
                raise
            except Exception as error:
                log.warning(
                    "pod watch failed, retrying in %.0fs: %s",
                    delay,
                    error,
                    extra={"event": "source.watch_failed"},
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_BACKOFF_SECONDS)

    async def scrape_round(self, session: aiohttp.ClientSession) -> None:
        """Scrape every ready pod with an IP; the others keep no value."""
        targets = {
            view.name: f"http://{view.ip}:{self._admin_port}/metrics"
            for view in self._pods.values()
            if view.ready and not view.deleting and view.ip
        }
        results = await scrape_all(session, targets, self._metric, self._scrape_timeout)
        now = time.time()
        nodes: dict[str, Node] = {}
        for name, view in self._pods.items():
            result = results.get(name)
            previous = self._nodes.get(name)
            if result is None:
                why = "not ready" if not view.ready else "no pod IP"
                nodes[name] = Node(name, view.ip, view.ready, view.deleting, error=why)
            elif result.value is None:
                # A pod that does not answer counts as missing; keep when it last answered.
                nodes[name] = Node(
                    name, view.ip, view.ready, view.deleting, None,
                    previous.scraped_at if previous else None, result.error,
                )  # fmt: skip
                if previous is None or previous.error != result.error:  # once per change
                    log.warning(
                        "scrape of %s failed: %s", name, result.error,
                        extra={"event": "source.scrape_failed"},
                    )  # fmt: skip
            else:
                if previous is not None and previous.error and previous.ready:
                    log.info("scrape of %s answers again", name,
                             extra={"event": "source.scrape_recovered"})  # fmt: skip
                nodes[name] = Node(name, view.ip, view.ready, view.deleting, result.value, now)
        self._nodes = nodes
        self.last_round = now
        self.rounds += 1
        self.scraped.set()

    async def scrape_forever(self) -> None:
        await self.synced.wait()  # a round before the pods are listed scrapes nobody
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                await self.scrape_round(session)
                await asyncio.sleep(max(0.0, self._scrape_interval - (time.monotonic() - started)))
