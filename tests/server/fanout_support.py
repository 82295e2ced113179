"""Helpers the fan-out tests share: a node's admin status, and stock JS clients put
in one room across nodes."""

from __future__ import annotations

import json
import urllib.request

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
