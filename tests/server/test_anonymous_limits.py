"""Without an identity (`IOFLEET_AUTH=none`) limits are per connection: one
client cannot use up a bucket or a room allowance shared by everyone."""

from __future__ import annotations

from typing import Any

from tests.server.conftest import PyClient


async def connect(url: str) -> PyClient:
    client = PyClient()
    await client.sio.connect(url, transports=["websocket"], wait_timeout=10)
    await client.wait(lambda: client.nodes)  # the chat app's server:hello
    return client


async def call(client: PyClient, event: str, data: Any) -> Any:
    return await client.sio.call(event, data, timeout=5)


async def test_anonymous_clients_do_not_share_limits(start_server) -> None:
    server = start_server(
        "anon",
        IOFLEET_AUTH="none",
        IOFLEET_JWT_SECRET="",
        IOFLEET_RATE_LIMIT="2",
        IOFLEET_RATE_LIMIT_BURST="3",
        IOFLEET_MAX_ROOMS_PER_USER="2",
    )
    noisy, quiet = await connect(server.url), await connect(server.url)
    try:
        replies = [await call(noisy, "room:join", {"room": f"n{i}"}) for i in range(6)]
        assert any(r.get("error") == "rate limited" for r in replies)  # noisy hit its bucket
        assert any(r.get("error") == "room limit reached" for r in replies)
        # The quiet client has its own bucket and its own room allowance.
        for room in ("q1", "q2"):
            assert (await call(quiet, "room:join", {"room": room}))["ok"]
    finally:
        for client in (noisy, quiet):
            await client.sio.disconnect()
