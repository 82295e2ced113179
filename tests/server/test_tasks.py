"""`server.core.tasks`: a cancel that is lost is repeated until the task ends."""

from __future__ import annotations

import asyncio
import contextlib

from server.core.tasks import cancel_all, cancel_and_wait


async def _swallows_cancels(times: int, ran_on: list[int]) -> None:
    """A loop that loses `times` cancels, as a 3.11 `wait_for` does when its inner
    await completes in the cancel's loop turn (CPython gh-86296)."""
    lost = 0
    while True:
        try:
            await asyncio.sleep(0.01)
        except asyncio.CancelledError:
            if lost == times:
                raise
            lost += 1
            ran_on.append(lost)


async def test_a_lost_cancel_is_repeated_until_the_task_ends() -> None:
    ran_on: list[int] = []
    task = asyncio.create_task(_swallows_cancels(2, ran_on))
    await asyncio.sleep(0.02)
    assert await cancel_and_wait(task, timeout=2.0)
    assert task.cancelled() and ran_on == [1, 2]


async def test_one_cancel_alone_leaves_such_a_task_running() -> None:
    """What the relay did before: one cancel, then a wait; the loop outlived it."""
    task = asyncio.create_task(_swallows_cancels(1, []))
    await asyncio.sleep(0.02)
    task.cancel()
    done, _ = await asyncio.wait({task}, timeout=0.3)
    assert not done
    assert await cancel_and_wait(task, timeout=2.0)


async def test_cancel_all_names_what_would_not_end() -> None:
    async def ignores_every_cancel() -> None:
        for _ in range(100):
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(0.01)

    async def fails() -> None:
        raise ValueError("it failed before the cancel")

    stubborn = asyncio.create_task(ignores_every_cancel(), name="stubborn")
    failed = asyncio.create_task(fails(), name="failed")
    polite = asyncio.create_task(asyncio.sleep(10), name="polite")
    await asyncio.sleep(0.02)
    assert await cancel_all([stubborn, failed, polite], timeout=0.3) == ["stubborn"]
    assert polite.cancelled() and isinstance(failed.exception(), ValueError)
    await asyncio.wait({stubborn}, timeout=5)  # it ends by itself after its 100 turns
