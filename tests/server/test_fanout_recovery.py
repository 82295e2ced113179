"""The fan-out recovers by itself: within about a second of Redis coming back
after an outage, after Redis kills the node's subscriber connection, and after
that connection goes quiet without closing (the listener's heartbeat)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
import urllib.error
import urllib.request
from typing import Any

import redis

from tests.server.fanout_support import cross_nodes, join_room, status
from tests.server.test_routing import CountingRelay
from tests.support.jsclient import JsClients
from tests.support.metrics import metric
from tests.support.procs import RedisServer, wait_until

OUTAGE_SECONDS = 4.0
RESUME_WITHIN_SECONDS = 1.5  # the listener retries every 0.5 s at most; slack for a busy host


async def test_fanout_resumes_within_a_second_of_redis_returning(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    await join_room(js, {"a1": node_a, "b1": node_b})

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


async def _two_nodes(start_server, js: JsClients, url_a: str, url_b: str) -> tuple[Any, Any]:
    node_a = start_server("node-a", IOFLEET_REDIS_URL=url_a)
    node_b = start_server("node-b", IOFLEET_REDIS_URL=url_b)
    await join_room(js, {"a1": node_a, "b1": node_b})
    return node_a, node_b


async def test_listener_resubscribes_after_redis_kills_it(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    _, node_b = await _two_nodes(start_server, js, redis_server.url, redis_server.url)
    await cross_nodes(js, "r", "before", within=10)
    killer = redis.Redis(port=redis_server.port)
    try:
        assert killer.client_kill_filter(_type="pubsub") >= 2  # both nodes' listeners
    finally:
        killer.close()
    await cross_nodes(js, "r", "after the kill", within=10)
    assert metric(node_b.admin_url, "iofleet_fanout_outages_total") == 1
    assert status(node_b.admin_url)["redis"] == "up"


async def test_a_listener_gone_quiet_notices_and_resubscribes(
    redis_server: RedisServer, start_server, js: JsClients
) -> None:
    relay = CountingRelay(redis_server.port).start()
    try:
        relay_url = f"redis://127.0.0.1:{relay.port}/0"
        _, node_b = await _two_nodes(start_server, js, redis_server.url, relay_url)
        await cross_nodes(js, "r", "before", within=10)
        readiness = ReadinessWatch(node_b.admin_url).start()
        try:
            assert relay.deafen() == 1  # node B's subscriber: still connected, hears nothing
            # Within a few heartbeats node B notices, says so, and subscribes anew.
            await asyncio.to_thread(
                wait_until,
                lambda: any(
                    e.get("event") == "fanout.listener_hears" for e in node_b.log_entries()
                ),
                15,
                "node B hearing again after its listener went deaf",
            )
            await cross_nodes(js, "r", "after going quiet", within=10)
            # Ready again once it hears (the watch may not have polled since: wait for it).
            await asyncio.to_thread(
                wait_until, lambda: readiness.seen[-1] == (200, []), 5, "node B ready again"
            )
        finally:
            seen = readiness.stop()
        assert metric(node_b.admin_url, "iofleet_fanout_outages_total") == 1
        # Not ready while deaf: its clients would miss the other nodes.
        assert (503, ["fan-out deaf"]) in seen, seen
    finally:
        relay.stop()


class ReadinessWatch:
    """Polls a node's /readyz every 50 ms from a thread, keeping each change."""

    def __init__(self, admin_url: str) -> None:
        self.url = f"{admin_url}/readyz"
        self.seen: list[tuple[int, list[str]]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def start(self) -> ReadinessWatch:
        self._thread.start()
        return self

    def stop(self) -> list[tuple[int, list[str]]]:
        self._stop.set()
        self._thread.join(timeout=5)
        return self.seen

    def _poll(self) -> None:
        while not self._stop.wait(0.05):
            try:
                with urllib.request.urlopen(self.url, timeout=2) as response:
                    answer = (response.status, json.loads(response.read())["reasons"])
            except urllib.error.HTTPError as error:
                answer = (error.code, json.loads(error.read())["reasons"])
            except OSError:
                continue
            if not self.seen or self.seen[-1] != answer:
                self.seen.append(answer)
