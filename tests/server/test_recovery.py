"""Connection state recovery end to end (`server/sio/cluster/recovery.py`): real Redis, real
server processes, the official JS client under Node (socket.io-client 4.8, which
sends `pid`/`offset` on reconnect and sets `socket.recovered`).

A client in a room drops while another client, on another node, keeps sending to
the room; it must come back recovered (same sid) having received every message
exactly once and in order, whether it reconnects to the same node or to another,
its node was killed with SIGKILL, or a drain moved it."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import socketio

from tests.server.fanout_support import status
from tests.support.jsclient import JsClients
from tests.support.metrics import metric_or_zero
from tests.support.procs import (
    TEST_ADMIN_TOKEN,
    RedisServer,
    ServerProcess,
    make_token,
    wait_until,
)

ROOM = "r"
MESSAGES = 60
SEND_EVERY_SECONDS = 0.04  # 60 messages over ~2.4 s: the client's reconnect falls inside
RECOVERY_ENV = {
    "IOFLEET_RECOVERY": "true",
    "IOFLEET_RATE_LIMIT": "1000",
    "IOFLEET_DRAIN_DELAY": "0.2",
    "IOFLEET_DRAIN_SECONDS": "0.5",
}


def nodes(start_server: Any, redis: RedisServer, count: int = 2, **env: str) -> list[ServerProcess]:
    settings = {**RECOVERY_ENV, "IOFLEET_REDIS_URL": redis.url, **env}
    return [start_server(f"node-{'abc'[i]}", **settings) for i in range(count)]


async def open_in_room(
    js: JsClients, name: str, node: ServerProcess, room: str = ROOM, **opts: Any
) -> str:
    """Open a client on `node`, in ROOM, once it holds an offset; returns its sid."""
    mark = len(js.messages)
    opts = {"transports": ["websocket"], **opts}
    await js.open(name, node.url, auth={"token": make_token(name)}, **opts)
    connected = await js.wait_client(name, "connect", start=mark)
    await say(js, name, room)
    return str(connected["sid"])


async def say(js: JsClients, name: str, room: str = ROOM) -> None:
    """Join `room` and say hello there, heard back: the client then holds an offset
    (the chat app's own greeting goes straight to the socket, without one)."""
    mark = len(js.messages)
    assert (await js.call(name, "room:join", {"room": room}))["ok"]
    text = f"hello from {name}"
    assert (await js.call(name, "chat:message", {"room": room, "text": text}))["ok"]
    await js.wait_for(
        lambda m: (
            m.get("client") == name
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == text
        ),
        start=mark,
    )


def texts(js: JsClients, name: str) -> list[str]:
    """The test messages (not the hellos) the client got, in order."""
    return [
        m["args"][0]["text"]
        for m in js.messages
        if m.get("client") == name
        and m.get("event") == "chat:message"
        and not m["args"][0]["text"].startswith("hello")
    ]


async def send_while(
    js: JsClients, sender: str, during: Callable[[], Awaitable[None]], count: int = MESSAGES
) -> list[str]:
    """Send `count` chat messages from `sender`, running `during` a third of the way in."""
    sent = []
    for i in range(count):
        if i == count // 3:
            await during()
        text = f"m{i:03d}"
        assert (await js.call(sender, "chat:message", {"room": ROOM, "text": text}))["ok"]
        sent.append(text)
        await asyncio.sleep(SEND_EVERY_SECONDS)
    return sent


async def assert_recovered(
    js: JsClients,
    name: str,
    sid: str,
    sent: list[str],
    node: ServerProcess,
    mark: int,
    within: float = 10,
) -> None:
    reconnect = await js.wait_client(name, "connect", timeout=15, start=mark)
    assert reconnect["recovered"] is True, reconnect
    assert reconnect["sid"] == sid
    # The order is Redis's (handlers run concurrently, so not always the sending
    # order): the one the sender, in the room and never away, got them in.
    order: list[str] = []

    async def all_heard() -> None:
        while True:
            order[:] = texts(js, "sender")
            if len(order) >= len(sent) and len(texts(js, name)) >= len(sent):
                return
            await asyncio.sleep(0.05)

    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(all_heard(), within)
    assert sorted(order) == sorted(sent), "the sender itself did not get each message once"
    got = texts(js, name)
    assert got == order, f"missing {sorted(set(sent) - set(got))}, extra/out of order: {got}"
    assert metric_or_zero(node.admin_url, "iofleet_recovery_replayed_total") > 0
    assert metric_or_zero(node.admin_url, "iofleet_recoveries_total", {"outcome": "recovered"}) >= 1


@pytest.mark.parametrize(
    ("sender_on", "back_to"), [("b", "a"), ("b", "b"), ("a", "b")], ids=lambda n: f"node-{n}"
)
async def test_a_dropped_client_recovers_every_message_once_in_order(
    redis_server: RedisServer, start_server: Any, js: JsClients, sender_on: str, back_to: str
) -> None:
    """The client starts on node A; the sender is on A or B; it reconnects to A or B.
    A sender on the client's own node checks that a node delivers its own emits in
    the stream's order (with their offsets), not before publishing them."""
    node = dict(zip("ab", nodes(start_server, redis_server), strict=True))
    sid = await open_in_room(js, "c", node["a"])
    await open_in_room(js, "sender", node[sender_on])
    mark = len(js.messages)

    async def drop() -> None:
        await js.drop("c", node[back_to].url)

    sent = await send_while(js, "sender", drop)
    await assert_recovered(js, "c", sid, sent, node[back_to], mark)
    # Offsets are the last argument of every event (a stream id), as Node sends them.
    last = [m for m in js.messages if m.get("client") == "c" and m.get("event") == "chat:message"]
    assert all(isinstance(m["args"][-1], str) and "-" in m["args"][-1] for m in last)


async def test_live_messages_during_a_long_replay_come_after_it_once(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    """The hand-off: a replay of several batches while the room keeps talking. Live
    messages that reach the recovering socket's node during the replay wait and
    follow it; those the replay already sent are not sent again."""
    node_a, node_b = nodes(start_server, redis_server, IOFLEET_RATE_LIMIT="5000")
    sid = await open_in_room(js, "c", node_a)
    await open_in_room(js, "sender", node_b)
    mark = len(js.messages)
    await js.drop("c")
    sent = [f"m{i:04d}" for i in range(1600)]
    for text in sent[:1200]:  # missed: three replay batches
        await js.emit("sender", "chat:message", {"room": ROOM, "text": text})
    for text in sent[1200:]:  # and more while it reconnects and replays
        await js.emit("sender", "chat:message", {"room": ROOM, "text": text})
        await asyncio.sleep(0.005)
    await assert_recovered(js, "c", sid, sent, node_a, mark, within=30)


MOVED = [f"c{i}" for i in range(4)]


async def clients_to_move(
    js: JsClients, node_a: ServerProcess, node_b: ServerProcess
) -> dict[str, str]:
    """MOVED on node A (WebSocket and polling), told to reconnect to node B; the
    sender on B. Returns each client's sid."""
    sids = {}
    for i, name in enumerate(MOVED):
        transports = ["websocket"] if i % 2 == 0 else ["polling"]
        sids[name] = await open_in_room(js, name, node_a, transports=transports)
        await js.retarget(name, node_b.url)
    await open_in_room(js, "sender", node_b)
    return sids


async def test_clients_whose_node_is_killed_recover_on_another(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    await clients_of_a_killed_node_recover(js, *nodes(start_server, redis_server))


async def clients_of_a_killed_node_recover(
    js: JsClients, node_a: ServerProcess, node_b: ServerProcess
) -> None:
    """MOVED on node A, SIGKILLed a third of the way into the sending: all recover on B."""
    sids = await clients_to_move(js, node_a, node_b)
    mark = len(js.messages)

    async def kill() -> None:
        node_a.signal(signal.SIGKILL)
        await asyncio.to_thread(node_a.wait_exit, 10)

    sent = await send_while(js, "sender", kill)
    for name, sid in sids.items():
        await assert_recovered(js, name, sid, sent, node_b, mark)


async def test_a_drain_moves_clients_without_losing_a_message(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    node_a, node_b = nodes(start_server, redis_server)
    sids = await clients_to_move(js, node_a, node_b)
    mark = len(js.messages)

    async def drain() -> None:
        request = urllib.request.Request(
            f"{node_a.admin_url}/admin/drain",
            method="POST",
            headers={"Authorization": f"Bearer {TEST_ADMIN_TOKEN}"},
        )
        await asyncio.to_thread(lambda: urllib.request.urlopen(request, timeout=5).read())

    sent = await send_while(js, "sender", drain)
    for name, sid in sids.items():
        await assert_recovered(js, name, sid, sent, node_b, mark)
    assert await asyncio.to_thread(node_a.wait_exit, 10) == 0


async def test_a_recovered_socket_gets_its_session_data_back(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    """What the application saved in the socket's session (`save_session`, or
    `async with sio.session(sid)`) comes back with a recovery on another node,
    as Node restores `socket.data`; the identity in it is the new token's."""
    node_a, node_b = nodes(
        start_server, redis_server, IOFLEET_HANDLERS="tests.server.routing_app:register"
    )
    sid = await open_in_room(js, "c", node_a)
    assert (await js.call("c", "remember", {"key": "color", "value": "teal"}))["ok"]
    assert (await js.call("c", "remember", {"key": "score", "value": [1, 2]}))["ok"]
    await open_in_room(js, "sender", node_b)
    mark = len(js.messages)

    async def drop() -> None:
        await js.drop("c", node_b.url)

    sent = await send_while(js, "sender", drop, count=15)
    await assert_recovered(js, "c", sid, sent, node_b, mark)
    assert await js.call("c", "recall", {"key": "color"}) == {"value": "teal", "user": "c"}
    assert (await js.call("c", "recall", {"key": "score"}))["value"] == [1, 2]
    # A client that did not recover starts with an empty session.
    assert (await js.call("sender", "recall", {"key": "color"}))["value"] is None


# --- what does not recover gets a fresh session ------------------------------------------

SLOW_RECONNECT = {"reconnectionDelay": 2500, "reconnectionDelayMax": 2500, "randomizationFactor": 0}


async def fresh_session_after(
    js: JsClients, node: ServerProcess, name: str, sid: str, mark: int, outcome: str
) -> None:
    """The client reconnected with a new session, and the node said why in one line."""
    reconnect = await js.wait_client(name, "connect", timeout=15, start=mark)
    assert reconnect["recovered"] is False
    assert reconnect["sid"] != sid
    await asyncio.to_thread(
        wait_until,
        lambda: any(
            e.get("event") == "recovery.refused" and e.get("outcome") == outcome
            for e in node.log_entries()
        ),
        5,
        f"recovery.refused {outcome} logged",
    )
    assert metric_or_zero(node.admin_url, "iofleet_recoveries_total", {"outcome": outcome}) >= 1


async def test_past_the_window_a_client_gets_a_fresh_session(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    (node,) = nodes(start_server, redis_server, 1, IOFLEET_RECOVERY_WINDOW_SECONDS="1")
    sid = await open_in_room(js, "c", node, **SLOW_RECONNECT)
    mark = len(js.messages)
    await js.drop("c")
    await fresh_session_after(js, node, "c", sid, mark, "unknown_session")


async def test_a_trimmed_offset_gets_a_fresh_session(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    (node,) = nodes(start_server, redis_server, 1, IOFLEET_RECOVERY_MAX_MESSAGES="100")
    sid = await open_in_room(js, "c", node, **SLOW_RECONNECT)
    await open_in_room(js, "sender", node)
    mark = len(js.messages)
    await js.drop("c")
    for i in range(400):  # the stream keeps about 100: the client's offset goes
        await js.emit("sender", "chat:message", {"room": ROOM, "text": f"t{i}"})
    await fresh_session_after(js, node, "c", sid, mark, "offset_trimmed")


async def test_an_unknown_pid_gets_a_fresh_session(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    (node,) = nodes(start_server, redis_server, 1)
    sid = await open_in_room(js, "c", node)
    await js.session("c", pid="not-a-session-anyone-had")
    mark = len(js.messages)
    await js.drop("c")
    await fresh_session_after(js, node, "c", sid, mark, "unknown_session")


async def test_another_users_pid_never_gives_their_session(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    node_a, node_b = nodes(start_server, redis_server)
    await open_in_room(js, "victim", node_a, room="private")
    stolen = await js.session("victim")
    assert stolen["pid"] and stolen["offset"]

    thief_sid = await open_in_room(js, "thief", node_b)
    await js.session("thief", pid=stolen["pid"], offset=stolen["offset"])
    mark = len(js.messages)
    await js.drop("thief")
    await fresh_session_after(js, node_b, "thief", thief_sid, mark, "auth_mismatch")
    # Not in the victim's room: a message there reaches the victim only.
    assert (await js.call("victim", "chat:message", {"room": "private", "text": "secret"}))["ok"]
    await js.wait_for(
        lambda m: (
            m.get("client") == "victim"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "secret"
        )
    )
    await asyncio.sleep(0.5)
    assert "secret" not in texts(js, "thief")


async def test_without_redis_events_still_reach_the_node_s_clients_without_offsets(
    redis_server: RedisServer, start_server: Any, js: JsClients
) -> None:
    """Recovery degrades, the fan-out does not: with Redis away an emit is delivered
    on its node at once (as with recovery off), without an offset."""
    (node,) = nodes(start_server, redis_server, 1)
    await open_in_room(js, "a", node)
    await open_in_room(js, "b", node)
    redis_server.stop()
    await asyncio.to_thread(
        wait_until, lambda: status(node.admin_url)["redis"] == "down", 10, "redis down"
    )
    mark = len(js.messages)
    assert (await js.call("a", "chat:message", {"room": ROOM, "text": "while away"}))["ok"]
    got = await js.wait_for(
        lambda m: m.get("client") == "b" and m.get("event") == "chat:message", start=mark
    )
    assert got["args"] == [{**got["args"][0], "text": "while away"}]  # no offset after it


# --- python-socketio's client ---------------------------------------------------------------


@pytest.mark.parametrize("recovery", ["true", "false"])
async def test_the_python_client_connects_and_receives(
    redis_server: RedisServer, start_server: Any, recovery: str
) -> None:
    """It never sends a pid, so it always gets a fresh session; with recovery on,
    every event has the offset as an extra last argument (README)."""
    env = {"IOFLEET_REDIS_URL": redis_server.url, "IOFLEET_RECOVERY": recovery}
    node = start_server("py", **env)
    client = socketio.AsyncClient()
    got: list[tuple[Any, ...]] = []
    heard = asyncio.Event()

    @client.on("*")
    async def any_event(event: str, *args: Any) -> None:
        got.append((event, *args))
        if event == "chat:message":
            heard.set()

    await client.connect(
        node.url, auth={"token": make_token("py")}, transports=["websocket"], wait_timeout=10
    )
    try:
        assert (await client.call("room:join", {"room": ROOM}, timeout=10))["ok"]
        assert (await client.call("chat:message", {"room": ROOM, "text": "hi"}, timeout=10))["ok"]
        await asyncio.wait_for(heard.wait(), 10)
    finally:
        await client.disconnect()
    message = next(args for args in got if args[0] == "chat:message")
    assert message[1]["text"] == "hi"
    if recovery == "true":
        assert len(message) == 3 and isinstance(message[2], str) and "-" in message[2]
    else:
        assert len(message) == 2
