"""Messages for one socket or one node cross only to the region where it lives
(tests/regions/conftest.py, three regions): an emit to a sid in r2 and the ack
that comes back travel r1 <-> r2 only, r3 gets no byte of them; an emit to a sid
of r1 itself crosses no link; a namespace emit still reaches every region."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from iofleet.regions import region_names
from tests.regions.conftest import World, running_world
from tests.support.metrics import metric
from tests.support.procs import wait_until

# A sid of the `<node>.<20 chars>` form whose node no region runs.
GHOST_SID = "ghost-node.AAAAAAAAAAAAAAAAAAAA"


@pytest.fixture
def world3() -> Iterator[World]:
    with running_world(region_names(3)) as running:
        yield running


def wait_every_node_known(world: World) -> None:
    for source in world.regions:
        for far in world.regions:
            if far != source:
                world.wait_nodes(source, far, 1)


async def test_a_sid_emit_and_its_ack_cross_only_to_the_sid_s_region(
    world3: World, py_clients: Any
) -> None:
    world = world3
    alice = await py_clients(world.regions["r1"].nodes[0].url, user="alice")
    bob = await py_clients(world.regions["r2"].nodes[0].url, user="bob")
    carol = await py_clients(world.regions["r3"].nodes[0].url, user="carol")

    @bob.sio.on("question")
    async def question(data: str) -> str:
        return f"ANSWER-{data}"

    wait_every_node_known(world)
    bob_sid = bob.sio.get_sid()
    # An emit with a callback to bob's sid; his ack comes back to alice's node.
    assert await alice.sio.call("ask", {"to": bob_sid, "question": "Q-MARK"}, timeout=10) == {
        "answer": "ANSWER-Q-MARK"
    }
    assert (await alice.sio.call("tell", {"to": bob_sid, "text": "SID-MARK"}))["ok"]
    assert (await alice.sio.call("tell", {"to": alice.sio.get_sid(), "text": "SELF-MARK"}))["ok"]
    assert (await alice.sio.call("announce", {"text": "ALL-MARK"}))["ok"]
    await bob.wait(lambda: bob.received("note") == ["SID-MARK", "ALL-MARK"])
    await carol.wait(lambda: carol.received("note") == ["ALL-MARK"])
    await alice.wait(lambda: alice.received("note") == ["SELF-MARK", "ALL-MARK"])

    assert world.seen_on_link("r1", "r2", "Q-MARK")
    assert world.seen_on_link("r1", "r2", "SID-MARK")
    assert world.seen_on_link("r2", "r1", "ANSWER-Q-MARK")
    assert world.seen_on_link("r1", "r3", "ALL-MARK")  # r3's link carries what it should
    for source, target, text in [
        ("r1", "r3", "Q-MARK"),  # the question: only where bob lives
        ("r1", "r3", "SID-MARK"),
        ("r2", "r3", "ANSWER-Q-MARK"),  # the ack: only where alice's node lives
        ("r1", "r2", "SELF-MARK"),  # alice's own sid: no link at all
        ("r1", "r3", "SELF-MARK"),
    ]:
        assert not world.seen_on_link(source, target, text), f"{text} crossed {source}->{target}"
    r1_relay = world.regions["r1"].relay
    assert r1_relay is not None
    assert metric(r1_relay.admin_url, "iofleet_relay_unaddressed_messages_total") == 0


async def test_a_sid_of_a_node_no_region_announced_crosses_to_every_region(
    world3: World, py_clients: Any
) -> None:
    """The race choice: a sid whose node no region announced (yet) is sent everywhere,
    and counted; losing an emit to a node that just started costs more than its bytes."""
    world = world3
    alice = await py_clients(world.regions["r1"].nodes[0].url, user="alice")
    wait_every_node_known(world)
    assert (await alice.sio.call("tell", {"to": GHOST_SID, "text": "GHOST-MARK"}))["ok"]
    r1_relay = world.regions["r1"].relay
    assert r1_relay is not None
    for far in ("r2", "r3"):
        wait_until(
            lambda far=far: world.seen_on_link("r1", far, "GHOST-MARK"),
            timeout=5,
            what=f"GHOST-MARK on r1->{far}",
        )
    assert metric(r1_relay.admin_url, "iofleet_relay_unaddressed_messages_total") == 1
