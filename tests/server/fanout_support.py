"""Helpers the fan-out tests share: a node's admin status, stock JS clients put
in one room across nodes, a message sent until it crosses, and the sid, ack and
namespace emits of the routing app across two nodes."""

from __future__ import annotations

import json
import time
import urllib.request
from typing import Any

from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess, make_token


def status(admin_url: str) -> dict[str, object]:
    """`GET /admin/status` of a node."""
    with urllib.request.urlopen(f"{admin_url}/admin/status", timeout=5) as response:
        body: dict[str, object] = json.loads(response.read())
    return body


async def join_room(js: JsClients, clients: dict[str, ServerProcess], room: str = "r") -> None:
    """Open each named JS client (WebSocket) on its node, connected and in `room`."""
    for name, node in clients.items():
        await js.open(name, node.url, auth={"token": make_token(name)}, transports=["websocket"])
        await js.wait_client(name, "connect")
        assert (await js.call(name, "room:join", {"room": room}))["ok"]


async def cross_nodes(js: JsClients, room: str, text: str, within: float = 15) -> None:
    """a1 (node A) sends to `room` until b1 (node B) gets one: pub/sub keeps nothing for
    a listener that is resubscribing, so a single message would race it."""
    deadline = time.monotonic() + within
    for attempt in range(1000):
        mark = len(js.messages)
        sent = f"{text} #{attempt}"
        assert (await js.call("a1", "chat:message", {"room": room, "text": sent}))["ok"]
        try:
            await js.wait_for(
                lambda m, sent=sent: (
                    m.get("client") == "b1"
                    and m.get("event") == "chat:message"
                    and m["args"][0]["text"] == sent
                ),
                timeout=0.5,
                start=mark,
            )
            return
        except TimeoutError:
            if time.monotonic() > deadline:
                raise


async def sid_acks_and_namespace_emits_cross(
    js: JsClients, py_clients: Any, node_a: ServerProcess, node_b: ServerProcess
) -> None:
    """With the routing app on both nodes: a JS client on node A asks a python client
    on node B (an emit with a callback to a sid, its ack coming back), tells it by
    sid, and announces to the namespace; node B's client gets both notes, in order."""
    on_b = await py_clients(node_b.url, user="on-b")

    @on_b.sio.on("question")
    async def question(data: str) -> str:
        return f"answer to {data}"

    await js.open("on-a", node_a.url, auth={"token": make_token("on-a")}, transports=["websocket"])
    await js.wait_client("on-a", "connect")
    target = on_b.sio.get_sid()
    reply = await js.call("on-a", "ask", {"to": target, "question": "q1"})
    assert reply == {"answer": "answer to q1"}
    assert (await js.call("on-a", "tell", {"to": target, "text": "by sid"}))["ok"]
    assert (await js.call("on-a", "announce", {"text": "to all"}))["ok"]
    await on_b.wait(lambda: on_b.received("note") == ["by sid", "to all"])
