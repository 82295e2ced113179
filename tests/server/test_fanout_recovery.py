"""After a Redis outage, the fan-out resumes within about a second of Redis
coming back (not at the listener's next backoff step seconds later)."""

from __future__ import annotations

import asyncio
import time

from tests.server.test_redis_outage import status
from tests.support.jsclient import JsClients
from tests.support.procs import RedisServer, make_token, wait_until

OUTAGE_SECONDS = 4.0
RESUME_WITHIN_SECONDS = 1.5  # the listener retries every 0.5 s at most; slack for a busy host


async def test_fanout_resumes_within_a_second_of_redis_returning(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    for name, node in (("a1", node_a), ("b1", node_b)):
        await js.open(name, node.url, auth={"token": make_token(name)}, transports=["websocket"])
        await js.wait_client(name, "connect")
        assert (await js.call(name, "room:join", {"room": "r"}))["ok"]

    redis_server.stop()
    for node in (node_a, node_b):
        await asyncio.to_thread(
            wait_until, lambda n=node: status(n.admin_url)["redis"] == "down", 10
        )
    await asyncio.sleep(OUTAGE_SECONDS)

    redis_server.start()
    back = time.monotonic()
    for node in (node_a, node_b):
        await asyncio.to_thread(wait_until, lambda n=node: status(n.admin_url)["redis"] == "up", 10)
    resumed_after = time.monotonic() - back
    assert resumed_after < RESUME_WITHIN_SECONDS, f"fan-out resumed {resumed_after:.1f}s after"
    mark = len(js.messages)
    assert (await js.call("a1", "chat:message", {"room": "r", "text": "back"}))["ok"]
    got = await js.wait_for(
        lambda m: m.get("client") == "b1" and m.get("event") == "chat:message", start=mark
    )
    assert got["args"][0]["text"] == "back"
