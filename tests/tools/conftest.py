"""Real servers for the tool tests: one server, or Redis + servers behind HAProxy."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from iofleet.balancers import LocalBalancer
from tests.support.cluster import SERVER_ENV, start_balancer
from tests.support.procs import TEST_JWT_SECRET, RedisServer, ServerProcess

# Generous limits so the load itself is never refused unless a test asks for it.
LOAD_ENV = {"IOFLEET_RATE_LIMIT": "500", "IOFLEET_PING_INTERVAL": "5", "IOFLEET_PING_TIMEOUT": "20"}


@pytest.fixture
def jwt_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """`auth: signed` reads the secret from IOFLEET_JWT_SECRET, as the command does."""
    monkeypatch.setenv("IOFLEET_JWT_SECRET", TEST_JWT_SECRET)


@pytest.fixture
def fleet(tmp_path: Path) -> Iterator[tuple[LocalBalancer, list[ServerProcess]]]:
    """Redis, two servers and HAProxy on loopback; everything stopped by PID afterwards."""
    redis = RedisServer().start()
    servers: list[ServerProcess] = []
    balancer: LocalBalancer | None = None
    try:
        env = {**SERVER_ENV, **LOAD_ENV, "IOFLEET_REDIS_URL": redis.url}
        servers = [ServerProcess(f"n{i}", env=dict(env)).start() for i in (1, 2)]
        balancer = asyncio.run(start_balancer("haproxy", servers, tmp_path))
        yield balancer, servers
    finally:
        if balancer is not None:
            balancer.stop()
        for server in servers:
            server.stop()
        redis.stop()
