"""Fixtures every test folder shares: Redis and the official JS client."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import pytest

from tests.support.jsclient import JsClients
from tests.support.procs import RedisServer


@pytest.fixture
async def js() -> AsyncIterator[JsClients]:
    """Official socket.io-client sockets under one Node process, stopped after the test."""
    clients = await JsClients().start()
    yield clients
    await clients.stop()


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A redis-server of this test's own (a test may stop it: an outage)."""
    server = RedisServer().start()
    yield server
    server.stop()


@pytest.fixture(scope="module")
def shared_redis() -> Iterator[RedisServer]:
    """One redis-server for a test module's long-lived servers."""
    server = RedisServer().start()
    yield server
    server.stop()
