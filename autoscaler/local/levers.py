"""How a server joins and leaves the local fleet's balancer, per balancer kind.

HAProxy: every node id up to the fleet's max has a server line (the spare ones declared
`disabled`, see `HaproxyOptions.spare_slots`), so a new server takes a free slot through
the runtime API (`set server ... addr`, `check-port`, `state ready`) and keeps HAProxy's
cookie and sid stickiness; no reload. nginx: the `iofleet up` process owns nginx's config
and already follows fleet.json (`iofleet.readiness.watch_nginx_readiness`: a graceful
reload within a second of a change), so joining is being listed there, and a draining
server leaves the pool as its /readyz turns 503.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Collection
from pathlib import Path
from typing import Protocol

from iofleet.drain import drain_haproxy_node, drain_server
from iofleet.haproxy_runtime import HaproxyRuntime
from iofleet.local_servers import ServerSpec


def node_number(name: str) -> tuple[int, str]:
    """Sort key: node2 before node10."""
    digits = re.search(r"(\d+)$", name)
    return (int(digits.group(1)) if digits else 0, name)


def pool_line(address: str) -> re.Pattern[str]:
    """nginx's pool line for a server in rotation (`server ADDR max_fails=...;`, no `down`)."""
    return re.compile(rf"^\s*server {re.escape(address)} max_fails=[^;\n]*(?<! down);$", re.M)


class Lever(Protocol):
    async def free_names(self, in_use: Collection[str], count: int) -> list[str]:
        """Up to `count` node ids a new server may take (fewer when no slot is left)."""
        ...

    async def join(self, spec: ServerSpec, within: float) -> None:
        """Put a ready server in rotation; return once the balancer sends it sessions."""
        ...

    async def drain(self, name: str, admin_url: str, token: str, within: float) -> bool:
        """Out of rotation, the server's paced drain, wait; True when it emptied in time."""
        ...


class HaproxyLever:
    def __init__(self, runtime: HaproxyRuntime, backend: str) -> None:
        self.runtime = runtime
        self.backend = backend

    async def free_names(self, in_use: Collection[str], count: int) -> list[str]:
        slots = [s.name for s in await self.runtime.servers_state(self.backend)]
        return sorted((n for n in slots if n not in in_use), key=node_number)[:count]

    async def join(self, spec: ServerSpec, within: float) -> None:
        name = spec.node_id
        await self.runtime.fill_slot(
            self.backend, name, spec.host, spec.port, check_port=spec.admin_port
        )
        await self.runtime.enable(self.backend, name)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            states = await self.runtime.servers_state(self.backend)
            if any(s.name == name and s.in_rotation for s in states):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"HAProxy did not put {name} in rotation within {within:g}s")

    async def drain(self, name: str, admin_url: str, token: str, within: float) -> bool:
        # Ends in maintenance: the slot stays, free for the next scale-up.
        return await drain_haproxy_node(
            self.runtime, self.backend, name, admin_url=admin_url, token=token, within=within
        )


class NginxLever:
    def __init__(self, config_path: Path, max_servers: int) -> None:
        self.config_path = config_path
        self.max_servers = max_servers

    async def free_names(self, in_use: Collection[str], count: int) -> list[str]:
        names = (f"node{i}" for i in range(1, self.max_servers + 1))
        return [n for n in names if n not in in_use][:count]

    async def join(self, spec: ServerSpec, within: float) -> None:
        # The fleet's readiness watcher adds it (it is in fleet.json already); the pool
        # line without `down` is the sign nginx was reloaded with it.
        line = pool_line(spec.backend.address)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while loop.time() < deadline:
            if line.search(self.config_path.read_text()):
                return
            await asyncio.sleep(0.1)
        raise TimeoutError(f"nginx did not take {spec.node_id} in within {within:g}s")

    async def drain(self, name: str, admin_url: str, token: str, within: float) -> bool:
        # The drain turns /readyz to 503 at once; the watcher marks it down in the pool.
        await drain_server(admin_url, token, wait=True, within=within)
        return True
