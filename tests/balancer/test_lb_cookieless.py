"""HAProxy keeps cookie-less polling clients sticky by the node id in their `sid`.

Many non-browser clients keep no cookies (python-socketio's aiohttp jar drops a
cookie set by an IP-address host, for one); their polling sessions must survive
the balancer too, as they do through nginx's sid map.
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import socketio

from tests.support.cluster import NODES, Crowd, start_balancer
from tests.support.jsclient import JsClients
from tests.support.procs import ServerProcess, make_token

CLIENTS = 12


async def test_cookieless_polling_clients_stay_on_their_node(
    servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer("haproxy", servers, tmp_path)
    python_client = socketio.AsyncClient(reconnection=False)
    try:
        crowd = Crowd(js, balancer.url, cookies=False)
        names = [f"nocookie{i}" for i in range(CLIENTS)]
        for name in names:
            await crowd.open(name, transports=["polling"])
        await crowd.wait_connected(names)
        assert set(crowd.spread(names)) == set(NODES)  # new sessions still spread

        # python-socketio over polling with its default cookie jar.
        hello: list[str] = []
        python_client.on("server:hello", lambda data: hello.append(data["node_id"]))
        await python_client.connect(
            balancer.url, auth={"token": make_token("py")}, transports=["polling"]
        )
        await crowd.join(names, "room")
        await python_client.call("room:join", {"room": "room"})

        await asyncio.sleep(3)  # several 1 s ping cycles: every poll must find its server
        await js.emit(names[0], "chat:message", {"room": "room", "text": "still here"})
        await crowd.wait_received(names, "still here")
        assert crowd.failures(names) == []
        assert all(len(crowd.hellos(n)) == 1 for n in names)
        assert python_client.connected and len(hello) == 1
    finally:
        await python_client.disconnect()
        balancer.stop()
