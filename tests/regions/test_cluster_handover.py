"""The hand-over catch-up where a region runs a Redis Cluster (recovery on): r1 runs two
relay replicas, a room talks from r1 to r2, r1's active relay is SIGKILLed, and r2's
member gets every message once, in publish order. r1 on a 3-master Cluster with r2 on
one Redis: the catch-up reads the namespace's stream on its master; r1 on one Redis
with r2 on a Cluster: the far record of what crossed sits in the slot of r2's
namespace stream, beside it (`relay.catchup`, `relay.guard`); and two Clusters, both
at once. Regions as in
tests/regions/test_cluster_regions.py; the hand-over as in test_handover.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from iofleet.regions import RelayProcess
from relay.guard import crossed_key
from relay.link import PeerLink
from relay.metrics import RelayMetrics
from relay.settings import Settings
from relay.wire import Channels
from server.sio.cluster.recovery import hash_tag
from tests.regions.conftest import World
from tests.regions.test_cluster_regions import cworld, kinds, recovery  # noqa: F401 (fixtures)
from tests.regions.test_handover import killed_after_a_batch, killed_while_talking, standby_in

CLUSTER_TO_SINGLE = {"r1": "cluster", "r2": "single"}
SINGLE_TO_CLUSTER = {"r1": "single", "r2": "cluster"}
CLUSTER_TO_CLUSTER = {"r1": "cluster", "r2": "cluster"}
EVERY_PAIR = pytest.mark.parametrize(
    "kinds",
    [CLUSTER_TO_SINGLE, SINGLE_TO_CLUSTER, CLUSTER_TO_CLUSTER],
    ids=["cluster-to-single", "single-to-cluster", "cluster-to-cluster"],
)


@pytest.fixture
async def cstandby(cworld: World) -> AsyncIterator[RelayProcess]:  # noqa: F811 (a fixture)
    async with standby_in(cworld) as replica:
        yield replica


# SIGKILL while a room talks: nothing lost; SIGKILL right after a batch: nothing again.
CASES = pytest.mark.parametrize(
    "case", [killed_while_talking, killed_after_a_batch], ids=["while-talking", "after-a-batch"]
)


@EVERY_PAIR
@CASES
async def test_the_active_relay_of_a_cluster_link_killed_loses_and_repeats_nothing(
    cworld: World,  # noqa: F811 (a fixture)
    py_clients: Any,
    cstandby: RelayProcess,
    kinds: dict[str, str],  # noqa: F811 (a fixture)
    case: Callable[[World, Any, RelayProcess, int], Awaitable[None]],
) -> None:
    # Two Clusters also announce the namespace's channel to each other: two channels.
    rooms = 2 if set(kinds.values()) == {"cluster"} else 1
    await case(cworld, py_clients, cstandby, rooms)


def link_of(near_url: str, far_url: str) -> PeerLink:
    settings = Settings(region="r1", redis_url=near_url, far_redis_url=f"r2={far_url}")
    peer = settings.peer_list()[0]
    return PeerLink("r1", peer, Channels(settings.redis_channel), settings, RelayMetrics())


SINGLE_URL, CLUSTER_URL = "redis://127.0.0.1:1/0", "redis+cluster://127.0.0.1:2"


def test_the_far_record_of_what_crossed_sits_in_its_far_streams_slot() -> None:
    """The guarded script's three keys (stream, channel, record) share one slot on a far
    Cluster; several near streams into one far stream each keep their own record."""
    message = {"method": "emit", "namespace": "/chat", "room": "r", "data": ["x"]}
    into_cluster = link_of(SINGLE_URL, CLUSTER_URL)
    channel = into_cluster.layout.channel_of(message, streamed=True)
    stream = into_cluster.layout.stream_of(channel)
    record = into_cluster.record_key("iofleet#stream", stream)
    assert hash_tag(record) == hash_tag(stream) == hash_tag(channel)  # one slot
    assert record == crossed_key(stream, "r1")
    # One Redis's one stream feeds each far namespace stream: a record per namespace.
    records = into_cluster.records("iofleet#stream", {"/", "/chat"})
    assert len({hash_tag(r) for r in records}) == 2

    from_cluster = link_of(CLUSTER_URL, SINGLE_URL)
    near = from_cluster.near_layout.keys
    records = set()
    for namespace in ("/", "/chat"):
        records |= from_cluster.records(near.stream(namespace), {namespace})
    assert len(records) == 2  # two near sequences of ids, two records in the one far stream
    assert all(r.startswith(crossed_key(from_cluster.stream_key, "r1")) for r in records)

    both_single = link_of(SINGLE_URL, "redis://127.0.0.1:3/0")
    assert both_single.records("iofleet#stream", {"/", "/chat"}) == {both_single.crossed_key}
