"""Fixtures: three real servers sharing a real Redis (`js`, `redis_server`: tests/conftest.py)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.support.cluster import NODES, SERVER_ENV
from tests.support.procs import RedisServer, ServerProcess


@pytest.fixture
def server_env() -> dict[str, str]:
    """Extra `IOFLEET_` settings of the three servers (a test module may override it)."""
    return dict(SERVER_ENV)


@pytest.fixture
def servers(redis_server: RedisServer, server_env: dict[str, str]) -> Iterator[list[ServerProcess]]:
    env = {**server_env, "IOFLEET_REDIS_URL": redis_server.url}
    started = [ServerProcess(node, env=dict(env)).start(wait_ready=False) for node in NODES]
    try:
        for server in started:
            server.wait_ready()
        yield started
    finally:
        for server in started:
            server.stop()


@pytest.fixture
def redis(redis_server: RedisServer) -> RedisServer:
    """The name these tests used before `redis_server` was shared (kept for them)."""
    return redis_server
