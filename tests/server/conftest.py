"""Fixtures for the server tests: a real redis-server, real `python -m server`
processes, the official JS client under Node and python-socketio's client."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import pytest
import socketio

from tests.support.procs import RedisServer, ServerProcess, make_token, two_nodes


@pytest.fixture(scope="module")
def cluster(shared_redis: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    """Two nodes sharing one Redis, for tests that leave them running as they were."""
    env = {
        "IOFLEET_REDIS_URL": shared_redis.url,
        "IOFLEET_GUEST_TOKENS": "true",
        # A polling client's disconnect waits out the current long-poll.
        "IOFLEET_PING_INTERVAL": "5",
    }
    with two_nodes(env) as nodes:
        yield nodes


@pytest.fixture
def start_server() -> Iterator[Any]:
    """Factory for servers with their own settings; all stopped at teardown."""
    started: list[ServerProcess] = []

    def start(node_id: str = "solo", wait_ready: bool = True, **env: str) -> ServerProcess:
        server = ServerProcess(node_id, env=env)
        started.append(server)  # before start: a server that fails to get ready is stopped too
        return server.start(wait_ready=wait_ready)

    yield start
    for server in started:
        server.stop()


class PyClient:
    """python-socketio's AsyncClient with every received event recorded."""

    def __init__(self, **client_options: Any) -> None:
        self.sio = socketio.AsyncClient(**client_options)
        self.events: list[tuple[str, Any]] = []
        self.nodes: list[str] = []
        self.disconnects: list[Any] = []
        self.offsets: list[tuple[str, Any]] = []  # (event, recovery offset)
        self.connects = 0
        self._changed = asyncio.Event()

        @self.sio.event
        async def connect() -> None:
            self.connects += 1
            self._changed.set()

        @self.sio.event
        async def disconnect(reason: Any = None) -> None:
            self.disconnects.append(reason)
            self._changed.set()

        @self.sio.on("*")
        async def any_event(event: str, data: Any = None, *more: Any) -> None:
            # With connection state recovery on, an event's last argument is its offset.
            self.events.append((event, data))
            if more:
                self.offsets.append((event, more[-1]))
            if event == "server:hello":
                self.nodes.append(data["node_id"])
            self._changed.set()

    def received(self, event: str) -> list[Any]:
        return [data for name, data in self.events if name == event]

    async def wait(self, condition: Any, timeout: float = 10) -> None:
        async def loop() -> None:
            while not condition():
                self._changed.clear()
                await self._changed.wait()

        await asyncio.wait_for(loop(), timeout)


@pytest.fixture
async def py_clients() -> AsyncIterator[Any]:
    """Factory: connected python-socketio clients, all disconnected at teardown."""
    made: list[PyClient] = []

    async def connect(
        url: str,
        user: str = "py-user",
        transports: list[str] | None = None,
        token: str | None = None,
        **options: Any,
    ) -> PyClient:
        client = PyClient(**options)
        made.append(client)
        await client.sio.connect(
            url,
            auth={"token": token or make_token(user)},
            transports=transports or ["websocket"],
            wait_timeout=10,
        )
        await client.wait(lambda: client.nodes)
        return client

    yield connect
    await asyncio.gather(*(client.sio.shutdown() for client in made))
