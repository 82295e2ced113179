"""Per-room routing across nodes (server/sio/cluster/fanout.py): a node subscribes to a room's
channel only while it has a member there, and receives none of the bytes of a
room it has no member in, measured on its Redis connections."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
import redis

from server.sio.cluster.recovery import stream_id
from tests.server.fanout_support import sid_acks_and_namespace_emits_cross
from tests.support.jsclient import JsClients
from tests.support.metrics import metric
from tests.support.procs import RedisServer, free_port, make_token, wait_until

FAST = {"IOFLEET_RATE_LIMIT": "100000"}
ROUTING_APP = "tests.server.routing_app:register"


class CountingRelay:
    """A TCP relay in front of Redis that keeps every byte Redis sends through it.

    Runs its own event loop in a thread, so that the test's blocking waits (server
    start-up) never stall the node's Redis traffic. `deafen()` makes the
    subscriber connections open at that moment go quiet (Redis's bytes to them are
    swallowed, the TCP connection stays up): a half-open link. `received(by=...)`
    keeps to the connections that sent `by` (a client name: `iofleet-<node id>`),
    so one relay can stand for every node in front of a Redis Cluster master."""

    def __init__(self, redis_port: int) -> None:
        self.redis_port = redis_port
        self.port = free_port()
        self.downstream = bytearray()  # Redis -> node, every connection
        self._by_link: dict[int, bytearray] = {}  # the same, per connection
        self._sent: dict[int, bytes] = {}  # the start of what each connection sent Redis
        self._subscribers: set[int] = set()  # ids of connections that sent SUBSCRIBE
        self._deaf: set[int] = set()
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._server: asyncio.Server

    def start(self) -> CountingRelay:
        self._thread.start()
        assert self._ready.wait(5), "relay did not start"
        return self

    def received(self, by: bytes | None = None) -> bytes:
        with self._lock:
            if by is None:
                return bytes(self.downstream)
            links = [link for link, sent in self._sent.items() if by in sent]
            return b"".join(bytes(self._by_link[link]) for link in links)

    def deafen(self) -> int:
        """Swallow from now on what Redis sends the current subscriber connections."""
        with self._lock:
            self._deaf = set(self._subscribers)
            return len(self._deaf)

    def reset(self) -> None:
        with self._lock:
            self.downstream.clear()
            for received in self._by_link.values():
                received.clear()

    def stop(self) -> None:
        asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop).result(5)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(5)
        self._loop.close()

    async def _shutdown(self) -> None:
        self._server.close()
        pipes = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in pipes:
            task.cancel()
        await asyncio.gather(*pipes, return_exceptions=True)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", self.port)
        )
        self._ready.set()
        self._loop.run_forever()

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.redis_port)
        link = id(client_w)
        with self._lock:
            self._by_link[link] = bytearray()
            self._sent[link] = b""

        async def pipe(src: asyncio.StreamReader, dst: asyncio.StreamWriter, keep: bool) -> None:
            try:
                while chunk := await src.read(65536):
                    with self._lock:
                        if not keep and b"SUBSCRIBE" in chunk.upper():
                            self._subscribers.add(link)
                        if not keep and len(self._sent[link]) < 4096:  # the hello, name
                            self._sent[link] += chunk[:4096]
                        if keep and link in self._deaf:
                            continue
                        if keep:
                            self.downstream += chunk
                            self._by_link[link] += chunk
                    dst.write(chunk)
                    await dst.drain()
            except OSError:
                pass
            finally:
                dst.close()

        await asyncio.gather(pipe(client_r, redis_w, False), pipe(redis_r, client_w, True))


@pytest.fixture
def relay(redis_server: RedisServer) -> Iterator[CountingRelay]:
    counting = CountingRelay(redis_server.port).start()
    yield counting
    counting.stop()


def subscribers(redis_server: RedisServer, room: str) -> int:
    client = redis.Redis(port=redis_server.port)
    try:
        channel = f"iofleet#room#/#{room}"
        return int(dict(client.pubsub_numsub(channel))[channel.encode()])
    finally:
        client.close()


async def test_a_node_without_members_gets_no_bytes_of_a_room(
    start_server, redis_server: RedisServer, relay: CountingRelay, js: JsClients, py_clients
) -> None:
    node_a = start_server("node-a", IOFLEET_REDIS_URL=redis_server.url, **FAST)
    node_b = start_server("node-b", IOFLEET_REDIS_URL=f"redis://127.0.0.1:{relay.port}/0", **FAST)
    on_a = await py_clients(node_a.url, user="on-a")
    for room in ("busy", "quiet"):
        assert (await on_a.sio.call("room:join", {"room": room}, timeout=10))["ok"]
    await js.open("on-b", node_b.url, auth={"token": make_token("on-b")}, transports=["websocket"])
    await js.wait_client("on-b", "connect")
    assert (await js.call("on-b", "room:join", {"room": "quiet"}))["ok"]
    wait_until(lambda: subscribers(redis_server, "quiet") == 2, what="both nodes on quiet")
    assert subscribers(redis_server, "busy") == 1  # node A only

    relay.reset()
    for i in range(30):
        reply = await on_a.sio.call("chat:message", {"room": "busy", "text": f"BUSY-MARK-{i}"})
        assert reply == {"ok": True}
    assert (await on_a.sio.call("chat:message", {"room": "quiet", "text": "QUIET-MARK"}))["ok"]
    message = await js.wait_for(
        lambda m: m.get("client") == "on-b" and m.get("event") == "chat:message"
    )
    assert message["args"][0]["text"] == "QUIET-MARK"
    await on_a.wait(lambda: len(on_a.received("chat:message")) == 31)
    # Redis sends node B the quiet room's message and nothing of the busy room's 30.
    seen_by_b = relay.received()
    assert b"QUIET-MARK" in seen_by_b
    assert b"BUSY-MARK" not in seen_by_b, "node B was sent a room it has no member in"

    # The last member leaves: node B unsubscribes and hears nothing more of it.
    assert (await js.call("on-b", "room:leave", {"room": "quiet"}))["ok"]
    wait_until(lambda: subscribers(redis_server, "quiet") == 1, what="node B off quiet")
    relay.reset()
    assert (await on_a.sio.call("chat:message", {"room": "quiet", "text": "AFTER-MARK"}))["ok"]
    await on_a.wait(lambda: len(on_a.received("chat:message")) == 32)
    await asyncio.sleep(0.3)
    assert b"AFTER-MARK" not in relay.received()


async def test_sid_emits_acks_and_namespace_emits_still_cross_nodes(
    start_server, redis_server: RedisServer, js: JsClients, py_clients
) -> None:
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_HANDLERS": ROUTING_APP, **FAST}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    await sid_acks_and_namespace_emits_cross(js, py_clients, node_a, node_b)


@pytest.mark.parametrize("recovery", ["false", "true"])
async def test_a_burst_of_concurrent_emits_crosses_nodes_whole_and_in_order(
    start_server, redis_server: RedisServer, py_clients, recovery: str
) -> None:
    """3,000 emits at once from one node: each reaches the other node, none through
    the outbox (redis-py's pool refuses a 101st concurrent command), in the order
    the sending node delivered them to its own client. With connection state
    recovery, through the stream, in the order they were made, at rising offsets
    (so a replay gives the order they were seen live)."""
    env = {
        "IOFLEET_REDIS_URL": redis_server.url,
        "IOFLEET_HANDLERS": ROUTING_APP,
        "IOFLEET_RECOVERY": recovery,
        **FAST,
    }
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    on_a = await py_clients(node_a.url, user="on-a")
    on_b = await py_clients(node_b.url, user="on-b")
    for client in (on_a, on_b):
        assert (await client.sio.call("room:join", {"room": "r"}))["ok"]
    count = 3000  # at 400, the 32 concurrent emit scripts of old were still in order
    assert (await on_a.sio.call("burst", {"room": "r", "count": count}, timeout=15))["ok"]
    await on_b.wait(lambda: len(on_b.received("tick")) == count, timeout=15)
    await on_a.wait(lambda: len(on_a.received("tick")) == count, timeout=15)
    assert sorted(on_b.received("tick")) == list(range(count))  # each once
    assert on_b.received("tick") == on_a.received("tick")  # in the sender's order
    assert metric(node_a.admin_url, "iofleet_fanout_publish_failures_total") == 0
    if recovery == "true":
        assert on_b.received("tick") == list(range(count))  # in the order made
        for client in (on_a, on_b):
            offsets = [stream_id(offset) for event, offset in client.offsets if event == "tick"]
            assert len(offsets) == count and offsets == sorted(offsets)
