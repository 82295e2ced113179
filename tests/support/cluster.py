"""Three real servers behind a real HAProxy or nginx, and named JS clients through it."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iofleet.balancers import (
    LocalBalancer,
    haproxy_options,
    nginx_options,
    start_haproxy,
    start_nginx,
)
from iofleet.processes import free_port
from iofleet.render import Backend, Timeouts
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess, make_token

NODES = ("n1", "n2", "n3")
# Short ping cycles: every polling client sends a request about once a second, so a few
# seconds exercise many requests of each session through the balancer.
SERVER_ENV = {
    "IOFLEET_PING_INTERVAL": "1",
    "IOFLEET_PING_TIMEOUT": "3",
    "IOFLEET_DRAIN_DELAY": "1",
    "IOFLEET_DRAIN_SECONDS": "3",
    "IOFLEET_TRUST_PROXY_HEADERS": "true",
    "IOFLEET_RATE_LIMIT": "200",
}
TIMEOUTS = Timeouts(ping_interval_s=1, ping_timeout_s=3, drain_s=20)


def backends(servers: list[ServerProcess]) -> tuple[Backend, ...]:
    return tuple(Backend(s.node_id, "127.0.0.1", s.port, s.admin_port) for s in servers)


async def start_balancer(
    kind: str, servers: list[ServerProcess], workdir: Path, stickiness: str | None = None
) -> LocalBalancer:
    extra: dict[str, Any] = {"timeouts": TIMEOUTS}
    if stickiness:
        extra["stickiness"] = stickiness
    port = free_port()
    if kind == "haproxy":
        options = haproxy_options("127.0.0.1", port, backends(servers), workdir, **extra)
        balancer = await asyncio.to_thread(start_haproxy, options, workdir)
        runtime = balancer.runtime()
        # Every server must be up in HAProxy before a test counts where clients land.
        for _ in range(100):
            states = await runtime.servers_state("iofleet_servers")
            if len(states) == len(servers) and all(s.up for s in states):
                break
            await asyncio.sleep(0.1)
        else:
            raise TimeoutError("HAProxy did not see every server up")
        return balancer
    options_n = nginx_options("127.0.0.1", port, backends(servers), workdir, **extra)
    return await asyncio.to_thread(start_nginx, options_n, workdir)


@dataclass
class Crowd:
    """Named JS clients through one balancer, and where each one is connected."""

    js: JsClients
    url: str
    cookies: bool
    names: list[str] = field(default_factory=list)

    async def open(self, name: str, transports: list[str] | None = None) -> None:
        opts: dict[str, Any] = {"auth": {"token": make_token(name)}}
        if transports:
            opts["transports"] = transports
        if self.cookies:
            # Node's client keeps cookies (HAProxy's sticky cookie) only when asked to;
            # browsers always do for their own origin.
            opts["withCredentials"] = True
        self.names.append(name)
        await self.js.open(name, self.url, **opts)

    def hellos(self, name: str) -> list[str]:
        return [m["args"][0]["node_id"] for m in self.js.seen(name, "event", "server:hello")]

    def node(self, name: str) -> str | None:
        hellos = self.hellos(name)
        return hellos[-1] if hellos else None

    async def wait_connected(self, names: list[str], within: float = 20) -> None:
        """Every client has said hello (connected and told which node it is on)."""
        await self.js.wait_for(lambda _m: all(self.hellos(n) for n in names), timeout=within)

    def failures(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            m
            for m in self.js.messages
            if m.get("client") in names and m.get("type") in {"connect_error", "disconnect"}
        ]

    async def join(self, names: list[str], room: str) -> None:
        acks = await asyncio.gather(*(self.js.call(n, "room:join", {"room": room}) for n in names))
        assert all(ack["ok"] for ack in acks), acks

    def received(self, name: str, text: str) -> bool:
        return any(
            m["args"][0].get("text") == text for m in self.js.seen(name, "event", "chat:message")
        )

    async def wait_received(self, names: list[str], text: str, within: float = 10) -> None:
        await self.js.wait_for(lambda _m: all(self.received(n, text) for n in names), within)

    def spread(self, names: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in names:
            node = self.node(name)
            assert node is not None
            counts[node] = counts.get(node, 0) + 1
        return counts
