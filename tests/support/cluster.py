"""Three real servers behind a real HAProxy or nginx, and named JS clients through it."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from iofleet import balancers
from iofleet.balancers import BalancerKind, LocalBalancer
from iofleet.processes import free_port
from iofleet.render import Backend, Timeouts
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess, make_token

NODES = ("n1", "n2", "n3")
# Short ping cycles: every polling client sends a request about once a second, so a few
# seconds exercise many requests of each session through the balancer. A generous ping
# timeout: a loaded test machine must not look like a dead client.
SERVER_ENV = {
    "IOFLEET_PING_INTERVAL": "1",
    "IOFLEET_PING_TIMEOUT": "10",
    "IOFLEET_DRAIN_DELAY": "1",
    "IOFLEET_DRAIN_SECONDS": "3",
    "IOFLEET_TRUST_PROXY_HEADERS": "true",
    "IOFLEET_RATE_LIMIT": "200",
}
TIMEOUTS = Timeouts(ping_interval_s=1, ping_timeout_s=10, drain_s=20)


def backends(servers: list[ServerProcess]) -> tuple[Backend, ...]:
    return tuple(Backend(s.node_id, "127.0.0.1", s.port, s.admin_port) for s in servers)


async def start_balancer(
    kind: BalancerKind, servers: list[ServerProcess], workdir: Path, stickiness: str | None = None
) -> LocalBalancer:
    """The product's `start_balancer` in front of `servers`; HAProxy once it sees them up."""
    balancer = await asyncio.to_thread(
        functools.partial(
            balancers.start_balancer,
            kind,
            host="127.0.0.1",
            port=free_port(),
            backends=backends(servers),
            workdir=workdir,
            timeouts=TIMEOUTS,
            stickiness=stickiness,
        )
    )
    if kind == "haproxy":
        runtime = balancer.runtime()
        # Every server must be up in HAProxy before a test counts where clients land.
        for _ in range(100):
            states = await runtime.servers_state(balancer.record.backend)
            if len(states) == len(servers) and all(s.up for s in states):
                break
            await asyncio.sleep(0.1)
        else:
            balancer.stop()
            raise TimeoutError("HAProxy did not see every server up")
    return balancer


@dataclass
class Crowd:
    """Named JS clients through one balancer, and where each one is connected.

    What the clients saw is indexed incrementally, so a check costs the same however
    long the test has been running (a wait re-checks often).
    """

    js: JsClients
    url: str
    cookies: bool
    names: list[str] = field(default_factory=list)
    _cursor: int = 0
    _hellos: dict[str, list[str]] = field(default_factory=dict)
    _heard: dict[str, set[str]] = field(default_factory=dict)

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

    def _scan(self) -> None:
        messages = self.js.messages
        for message in messages[self._cursor :]:
            if message.get("type") != "event":
                continue
            client, payload = message["client"], message["args"][0]
            if message["event"] == "server:hello":
                self._hellos.setdefault(client, []).append(payload["node_id"])
            elif message["event"] == "chat:message":
                self._heard.setdefault(client, set()).add(payload.get("text"))
        self._cursor = len(messages)

    def hellos(self, name: str) -> list[str]:
        """Node ids this client was told on each (re)connection, in order."""
        self._scan()
        return list(self._hellos.get(name, []))

    def node(self, name: str) -> str | None:
        hellos = self.hellos(name)
        return hellos[-1] if hellos else None

    def received(self, name: str, text: str) -> bool:
        self._scan()
        return text in self._heard.get(name, set())

    async def until(self, check: Callable[[], bool], within: float, what: str) -> None:
        """Poll `check` every 50 ms, at most `within` seconds."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + within
        while not check():
            if loop.time() > deadline:
                raise TimeoutError(f"{what}: not within {within}s")
            await asyncio.sleep(0.05)

    async def wait_connected(self, names: list[str], within: float = 20) -> None:
        """Every client has said hello (connected and told which node it is on)."""
        await self.until(
            lambda: all(self.hellos(n) for n in names),
            within,
            f"connected: {[n for n in names if not self.hellos(n)]} missing",
        )

    def failures(self, names: list[str]) -> list[dict[str, Any]]:
        return [
            m
            for m in self.js.messages
            if m.get("client") in names and m.get("type") in {"connect_error", "disconnect"}
        ]

    async def join(self, names: list[str], room: str) -> None:
        acks = await asyncio.gather(*(self.js.call(n, "room:join", {"room": room}) for n in names))
        assert all(ack["ok"] for ack in acks), acks

    async def wait_received(self, names: list[str], text: str, within: float = 10) -> None:
        await self.until(
            lambda: all(self.received(n, text) for n in names),
            within,
            f"{text!r} heard by all",
        )

    def spread(self, names: list[str]) -> dict[str, int]:
        counts: dict[str, int] = {}
        for name in names:
            node = self.node(name)
            assert node is not None
            counts[node] = counts.get(node, 0) + 1
        return counts
