"""Nothing lost when the active relay dies (tests/regions/conftest.py, recovery on):
r1 runs two relay replicas; a room talks at a steady rate from r1 to r2 while the
active one is killed (SIGKILL), stopped cleanly, or paused past its lease, and r2's
member gets every message once, in publish order: the replica that takes over catches
up from r1's recovery stream what nobody heard (`relay.catchup`), and r2's Redis
refuses what crossed already (`relay.guard`)."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator
from typing import Any

import pytest

from iofleet.regions import RelayProcess
from tests.regions.conftest import World, get_json
from tests.regions.test_link_failures import in_room, say, texts
from tests.server.conftest import PyClient
from tests.support.metrics import metric, metric_or_zero
from tests.support.procs import wait_until

# A message every PACE_SECONDS (after the sender heard the last one back): the gap of
# a hand-over (up to 4 s: a 3 s lease and a 1 s poll) holds dozens of them.
PACE_SECONDS = 0.02
COUNT = 200
KILL_AT = 40


@pytest.fixture
async def standby(world: World) -> AsyncIterator[RelayProcess]:
    async with standby_in(world) as replica:
        yield replica


@contextlib.asynccontextmanager
async def standby_in(world: World) -> AsyncIterator[RelayProcess]:
    """A second relay replica in r1, standing by (r1's first relay holds the lease)."""
    active = world.regions["r1"].relay
    assert active is not None
    log_dir = world.log_dir / "standby"
    log_dir.mkdir()
    replica = RelayProcess("r1", active.redis_url, active.far, active.env)
    replica.start(log_dir, os.environ)
    try:
        await asyncio.to_thread(world.wait_active, "r1", active)
        assert not get_json(f"{replica.admin_url}/admin/status")["leader"]
        yield replica
    finally:
        replica.stop()


def assert_once_in_order(got: list[str], sent: list[str]) -> None:
    missing = [text for text in sent if text not in got]
    repeated = sorted({text for text in got if got.count(text) > 1})
    assert got == sent, f"{len(missing)} missing {missing[:5]}..., repeated {repeated[:5]}"


async def talk(alice: PyClient, sent: list[str], event: asyncio.Event, at: int) -> None:
    """alice says each of `sent`, one per PACE_SECONDS; `event` is set after the `at`th."""
    for index, text in enumerate(sent):
        await say(alice, [text])
        if index + 1 == at:
            event.set()
        await asyncio.sleep(PACE_SECONDS)


async def hand_over(
    world: World, py_clients: Any, standby: RelayProcess, how: signal.Signals, rooms: int = 1
) -> tuple[PyClient, list[str], float | None]:
    """alice (r1) talks to bob (r2); after KILL_AT messages r1's active relay gets `how`.
    bob's messages once the talk is over and all arrived (or 20 s passed: the caller's
    assertion shows what is missing); and the time from the signal to the first
    arrival at bob of a message sent after it (None: none came)."""
    alice, bob = await in_room(world, py_clients, rooms)
    active = world.regions["r1"].relay
    assert active is not None and active.process is not None
    sent = [f"H{i:03d}" for i in range(COUNT)]
    reached = asyncio.Event()
    talking = asyncio.create_task(talk(alice, sent, reached, KILL_AT))
    await reached.wait()
    active.process.send_signal(how)
    signalled = time.monotonic()
    after = len(texts(alice, "H"))  # alice's messages from here on were sent after it
    first_after: float | None = None
    with contextlib.suppress(TimeoutError):
        await bob.wait(lambda: any(t in sent[after:] for t in texts(bob, "H")), timeout=20)
        first_after = time.monotonic() - signalled
    await talking
    await asyncio.to_thread(world.wait_active, "r1", standby)
    with contextlib.suppress(TimeoutError):
        await bob.wait(lambda: len(texts(bob, "H")) >= COUNT, timeout=20)
    await asyncio.sleep(0.5)  # nothing more comes (no duplicates)
    return bob, sent, first_after


async def test_the_active_relay_killed_while_a_room_talks_loses_nothing(
    world: World, py_clients: Any, standby: RelayProcess
) -> None:
    await killed_while_talking(world, py_clients, standby)


async def killed_while_talking(
    world: World, py_clients: Any, standby: RelayProcess, rooms: int = 1
) -> None:
    """r1's active relay SIGKILLed while alice talks to bob: bob gets every message
    once, in order, the gap from the standby's catch-up (`rooms`: as `in_room`)."""
    active = world.regions["r1"].relay
    assert active is not None
    bob, sent, first_after = await hand_over(world, py_clients, standby, signal.SIGKILL, rooms)
    assert active.process is not None and active.process.wait(10) == -signal.SIGKILL
    assert_once_in_order(texts(bob, "H"), sent)  # every message once, in publish order
    caught = get_json(f"{standby.admin_url}/admin/status")["links"][0]["catchup"]
    assert caught["messages"] > 0, caught  # the gap came from the stream
    labels = {"link": "r2"}
    assert metric(standby.admin_url, "iofleet_relay_catchup_messages_total", labels) > 0
    assert metric(standby.admin_url, "iofleet_relay_catchups_total", labels) >= 1
    assert first_after is not None
    print(f"SIGKILL -> first caught-up delivery at bob: {first_after * 1000:.0f} ms; {caught}")


async def test_the_active_relay_stopped_cleanly_loses_nothing_and_repeats_nothing(
    world: World, py_clients: Any, standby: RelayProcess
) -> None:
    """SIGTERM: the lease is released at once, the outbox left behind is dropped
    (`shutdown`); the standby catches up from the stream after what crossed."""
    bob, sent, _ = await hand_over(world, py_clients, standby, signal.SIGTERM)
    assert_once_in_order(texts(bob, "H"), sent)


async def test_a_relay_killed_right_after_a_batch_crossed_repeats_nothing(
    world: World, py_clients: Any, standby: RelayProcess
) -> None:
    """What crossed (r2's record, `relay.guard`) is the catch-up's start: the replica
    taking over sends nothing again."""
    await killed_after_a_batch(world, py_clients, standby)


async def killed_after_a_batch(
    world: World, py_clients: Any, standby: RelayProcess, rooms: int = 1
) -> None:
    """A batch crossed, r1's active relay SIGKILLed: the standby sends nothing again."""
    alice, bob = await in_room(world, py_clients, rooms)
    first = [f"B{i:02d}" for i in range(30)]
    await say(alice, first)
    await bob.wait(lambda: len(texts(bob, "B")) >= len(first))
    await asyncio.sleep(0.2)  # r1's relay heard back from r2's Redis: the batch crossed
    active = world.regions["r1"].relay
    assert active is not None and active.process is not None
    active.process.send_signal(signal.SIGKILL)
    active.process.wait(10)
    await asyncio.to_thread(world.wait_active, "r1", standby)

    def caught_up() -> bool:  # before `then`: the catch-up's count is of `first` alone
        return get_json(f"{standby.admin_url}/admin/status")["links"][0]["catchup"] is not None

    await asyncio.to_thread(wait_until, caught_up, 10, "the standby's catch-up")
    then = [f"B{i:02d}" for i in range(30, 40)]
    await say(alice, then)
    await bob.wait(lambda: len(texts(bob, "B")) >= len(first + then))
    await asyncio.sleep(0.5)
    assert_once_in_order(texts(bob, "B"), first + then)
    caught = get_json(f"{standby.admin_url}/admin/status")["links"][0]["catchup"]
    assert caught["messages"] == 0 and caught["after"] is not None, caught


async def test_a_relay_paused_past_its_lease_and_woken_repeats_nothing(
    world: World, py_clients: Any, standby: RelayProcess
) -> None:
    """SIGSTOP past the lease: the standby takes over and catches up; SIGCONT: the old
    one forwards what its socket buffered before it sees it lost the lease. Both were
    active for a moment; r2's Redis refuses the repeats (counted)."""
    active = world.regions["r1"].relay
    assert active is not None and active.process is not None
    bob, sent, _ = await hand_over(world, py_clients, standby, signal.SIGSTOP)
    active.process.send_signal(signal.SIGCONT)
    await asyncio.to_thread(
        wait_until,
        lambda: not get_json(f"{active.admin_url}/admin/status")["leader"],
        10,
        "the woken relay standing by",
    )
    await asyncio.sleep(0.5)  # what it forwarded on waking has landed, or been refused
    assert_once_in_order(texts(bob, "H"), sent)
    assert get_json(f"{standby.admin_url}/admin/status")["leader"]
    refused = metric_or_zero(
        active.admin_url, "iofleet_relay_refused_duplicates_total", {"link": "r2"}
    )
    print(f"refused repeats from the woken relay: {refused:.0f}")
