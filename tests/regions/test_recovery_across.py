"""Connection state recovery keeps its promise for messages from the far region:
the relay republishes them through the far region's own recovery script
(`server.sio.cluster.recovery.EMIT_SCRIPT`), so they are in that region's stream
and a client that drops there gets every one of them once, in order, on return."""

from __future__ import annotations

from tests.regions.conftest import World
from tests.server.test_recovery import assert_recovered, open_in_room, send_while
from tests.support.jsclient import JsClients


async def test_a_client_that_drops_recovers_the_far_region_s_messages(
    world: World, js: JsClients
) -> None:
    r1, r2 = world.regions["r1"], world.regions["r2"]
    sid = await open_in_room(js, "c", r2.nodes[0])
    world.wait_interest("r1", "r2", 1)
    await open_in_room(js, "sender", r1.nodes[0])
    world.wait_interest("r2", "r1", 1)
    mark = len(js.messages)

    async def drop() -> None:
        await js.drop("c", r2.nodes[0].url)

    sent = await send_while(js, "sender", drop)
    await assert_recovered(js, "c", sid, sent, r2.nodes[0], mark)
