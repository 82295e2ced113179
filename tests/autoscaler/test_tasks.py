"""The daemons' task shutdown: a task that failed is said, by name; none is left running."""

from __future__ import annotations

import asyncio
import logging

import pytest

from autoscaler.tasks import stop_tasks


async def test_stop_tasks_cancels_the_running_and_logs_the_failed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def forever() -> None:
        await asyncio.sleep(3600)

    async def broken() -> None:
        raise RuntimeError("scrape loop broke")

    running = asyncio.create_task(forever(), name="control-loop")
    failed = asyncio.create_task(broken(), name="scrape")
    await asyncio.sleep(0)  # let `broken` fail
    with caplog.at_level(logging.ERROR):
        await stop_tasks([running, failed], logging.getLogger("test"))
    assert running.cancelled()
    (record,) = [r for r in caplog.records if getattr(r, "event", "") == "autoscaler.task_failed"]
    assert record.task == "scrape"  # type: ignore[attr-defined]
    assert "scrape loop broke" in record.error  # type: ignore[attr-defined]


async def test_cancelling_the_caller_propagates() -> None:
    async def stubborn() -> None:
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            await asyncio.sleep(3600)  # ignores the first cancel

    inner = asyncio.create_task(stubborn())
    await asyncio.sleep(0)
    stopping = asyncio.create_task(stop_tasks([inner], logging.getLogger("test")))
    await asyncio.sleep(0.01)
    stopping.cancel()
    with pytest.raises(asyncio.CancelledError):
        await stopping
    inner.cancel()
    with pytest.raises(asyncio.CancelledError):
        await inner
