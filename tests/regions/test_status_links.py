"""A region's servers name its links in their own `/admin/status` (tests/regions/
conftest.py): the active relay writes its links' state, held messages and lag to
`<channel>#relay#status` in the region's Redis, the servers read it; with no
relay active the servers say "unknown", at once after a clean stop, within the
key's TTL after a SIGKILL."""

from __future__ import annotations

import os
import signal
import time
from typing import Any

import orjson

from server.node.region_links import parse
from tests.regions.conftest import World, get_json
from tests.regions.test_link_failures import in_room, say
from tests.support.procs import ServerProcess, wait_until


def region_links(node: ServerProcess) -> dict[str, Any]:
    status: dict[str, Any] = get_json(f"{node.admin_url}/admin/status")["region_links"]
    return status


def link_to(node: ServerProcess, far: str) -> dict[str, Any] | None:
    links = region_links(node).get("links", [])
    return next((link for link in links if link["region"] == far), None)


def shows(node: ServerProcess, far: str, state: str, held: int) -> bool:
    link = link_to(node, far)
    return link is not None and (link["state"], link["held"]) == (state, held)


async def test_the_server_s_status_names_each_link_its_state_and_held_messages(
    world: World, py_clients: Any
) -> None:
    r1 = world.regions["r1"]
    node = r1.nodes[0]
    wait_until(lambda: region_links(node)["state"] == "known", timeout=10, what="links known")
    shown = region_links(node)
    assert shown["region"] == "r1" and shown["age_s"] < 5
    assert [(link["link"], link["state"], link["held"]) for link in shown["links"]] == [
        ("r1->r2", "up", 0)
    ]

    alice, _ = await in_room(world, py_clients)
    world.cut("r1", "r2")
    await say(alice, [f"HELD-{i}" for i in range(5)])
    wait_until(lambda: shows(node, "r2", "down", 5), timeout=10, what="5 held for r2")
    assert (link_to(node, "r2") or {})["lag_s"] > 0
    world.restore("r1", "r2")
    wait_until(lambda: shows(node, "r2", "up", 0), timeout=15, what="the link up, none held")

    # The relay killed: the servers say "unknown" once the key's TTL ran out
    # (3 leases of 3 s), and answer at once meanwhile.
    assert r1.relay is not None and r1.relay.process is not None
    r1.relay.process.send_signal(signal.SIGKILL)
    r1.relay.process.wait(10)
    started = time.monotonic()
    wait_until(lambda: region_links(node)["state"] == "unknown", timeout=15, what="unknown")
    assert time.monotonic() - started > 3  # what the dead relay last wrote lasted a while
    assert "no relay" in region_links(node)["reason"]

    # A relay that stops cleanly takes its status with it.
    r1.relay.start(world.log_dir, os.environ)
    wait_until(lambda: region_links(node)["state"] == "known", timeout=15, what="known again")
    r1.relay.stop()
    wait_until(lambda: region_links(node)["state"] == "unknown", timeout=2, what="unknown at once")


def test_a_status_key_that_is_not_the_relay_s_shows_unknown() -> None:
    link = {"link": "r1->r2", "region": "r2", "state": "up", "state_s": 1, "held": 0, "lag_s": 0}
    good = {"region": "r1", "written_at": 100.0, "links": [{**link, "far_rooms": 3}]}
    assert parse(orjson.dumps(good), 100.5) == {
        "state": "known",
        "region": "r1",
        "age_s": 0.5,
        "links": [link],  # what a server shows of a link: no more
    }
    for bad in (b"not json", b"[]", b'{"region": "r1"}', orjson.dumps({**good, "links": [{}]})):
        assert parse(bad, 100.0) == {"state": "unknown", "reason": "relay status unreadable"}
