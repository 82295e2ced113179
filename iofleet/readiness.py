"""The active health check nginx OSS lacks: poll each server's /readyz, mark the others down.

HAProxy checks /readyz itself (`option httpchk`); for nginx the local fleet runs
`watch_nginx_readiness`, which also keeps nginx's pool equal to the fleet's servers and
reloads nginx only when the pool or the set of not-ready servers changes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

import aiohttp

from iofleet.nginx_balancer import NginxBalancer
from iofleet.render import Backend

log = logging.getLogger(__name__)

Probe = Callable[[str], Awaitable[bool]]


async def readyz(admin_url: str) -> bool:
    """True when a server's /readyz answers 200."""
    try:
        timeout = aiohttp.ClientTimeout(total=2)
        async with (
            aiohttp.ClientSession(timeout=timeout) as http,
            http.get(f"{admin_url.rstrip('/')}/readyz") as response,
        ):
            return response.status == 200
    except (aiohttp.ClientError, TimeoutError):
        return False


def admin_url(backend: Backend) -> str:
    """Where a backend's /readyz is: its admin port, else its public port."""
    host = f"[{backend.host}]" if ":" in backend.host else backend.host
    return f"http://{host}:{backend.admin_port or backend.port}"


async def sync_nginx_readiness(
    nginx: NginxBalancer, backends: Sequence[Backend], probe: Probe = readyz
) -> bool:
    """One round: the pool is `backends`, the not-ready ones `down`; one reload at most.

    Returns True when the config changed (and nginx was reloaded).
    """
    ready = await asyncio.gather(*(probe(admin_url(b)) for b in backends))
    not_ready = frozenset(b.name for b, ok in zip(backends, ready, strict=True) if not ok)
    if not_ready != nginx.not_ready:
        log.info("nginx: servers not ready: %s", ", ".join(sorted(not_ready)) or "none")
    return await nginx.set_backends(tuple(backends), not_ready)


async def watch_nginx_readiness(
    nginx: NginxBalancer, backends: Callable[[], Sequence[Backend]], interval: float = 1.0
) -> None:
    """Run `sync_nginx_readiness` forever (cancel to stop); a failed round is logged, not fatal.

    `backends` is asked every round: servers added to or removed from the fleet (by the
    autoscaler, in fleet.json) join or leave nginx's pool within one round, so one
    process owns nginx's config.
    """
    while True:
        try:
            await sync_nginx_readiness(nginx, backends())
        except (RuntimeError, OSError, TimeoutError, ValueError) as error:
            log.warning("nginx readiness sync failed: %s", error)
        await asyncio.sleep(interval)
