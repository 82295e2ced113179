"""The hand-over catch-up where a region runs a Redis Cluster (recovery on): r1 runs two
relay replicas, a room talks from r1 to r2, r1's active relay is SIGKILLed, and r2's
member gets every message once, in publish order. r1 on a 3-master Cluster with r2 on
one Redis: the catch-up reads the namespace's stream on its master; r1 on one Redis
with r2 on a Cluster: the far record of what crossed sits in the slot of r2's namespace
stream, beside it (`relay.catchup`, `relay.guard`). Regions as in
tests/regions/test_cluster_regions.py; the hand-over as in test_handover.py."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from iofleet.regions import RelayProcess
from tests.regions.conftest import World
from tests.regions.test_cluster_regions import cworld, kinds, recovery  # noqa: F401 (fixtures)
from tests.regions.test_handover import killed_after_a_batch, killed_while_talking, standby_in

CLUSTER_TO_SINGLE = {"r1": "cluster", "r2": "single"}
SINGLE_TO_CLUSTER = {"r1": "single", "r2": "cluster"}
BOTH = pytest.mark.parametrize(
    "kinds", [CLUSTER_TO_SINGLE, SINGLE_TO_CLUSTER], ids=["cluster-to-single", "single-to-cluster"]
)


@pytest.fixture
async def cstandby(cworld: World) -> AsyncIterator[RelayProcess]:  # noqa: F811 (a fixture)
    async with standby_in(cworld) as replica:
        yield replica


# SIGKILL while a room talks: nothing lost; SIGKILL right after a batch: nothing again.
CASES = pytest.mark.parametrize(
    "case", [killed_while_talking, killed_after_a_batch], ids=["while-talking", "after-a-batch"]
)


@BOTH
@CASES
async def test_the_active_relay_of_a_cluster_link_killed_loses_and_repeats_nothing(
    cworld: World,  # noqa: F811 (a fixture)
    py_clients: Any,
    cstandby: RelayProcess,
    case: Callable[[World, Any, RelayProcess], Awaitable[None]],
) -> None:
    await case(cworld, py_clients, cstandby)
