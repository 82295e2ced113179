"""Drain one server of a fleet: the balancer stops new sessions, the server closes its own.

Order matters: the balancer lever first (HAProxy `drain`, or the server's own /readyz
503 for nginx's readiness watcher), then the server's paced drain (`POST /admin/drain`),
whose clients reconnect through the balancer to the others; once the server holds no
session it leaves the balancer for good. `iofleet drain` and the autoscaler's local
backend (scale-down) run this.
"""

from __future__ import annotations

import aiohttp

from iofleet.haproxy_runtime import HaproxyRuntime


async def drain_server(
    admin_url: str, token: str, *, wait: bool = False, within: float = 120
) -> None:
    """Ask one server to drain itself (`POST /admin/drain`); `wait` blocks until it is done."""
    url = f"{admin_url.rstrip('/')}/admin/drain" + ("?wait=true" if wait else "")
    client_timeout = aiohttp.ClientTimeout(total=within)
    async with (
        aiohttp.ClientSession(timeout=client_timeout) as http,
        http.post(url, headers={"Authorization": f"Bearer {token}"}) as response,
    ):
        if response.status >= 300:
            raise RuntimeError(f"{url}: HTTP {response.status} {await response.text()}")


async def drain_haproxy_node(
    runtime: HaproxyRuntime,
    backend: str,
    server: str,
    *,
    admin_url: str,
    token: str,
    within: float = 120,
) -> bool:
    """The whole drain of one server behind HAProxy: lever, server drain, wait, maint.

    True when the server's sessions reached zero within `within` seconds. The server
    is left in maintenance (not deleted), so `iofleet drain` can be undone by hand.
    """
    await runtime.drain(backend, server)
    await drain_server(admin_url, token, wait=False)
    drained = await runtime.wait_sessions_zero(backend, server, within)
    await runtime.set_state(backend, server, "maint")
    return drained
