"""Stopping a daemon's background tasks: cancel, wait, and say what had failed."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence


async def stop_tasks(tasks: Sequence[asyncio.Task[object]], log: logging.Logger) -> None:
    """Cancel `tasks` and wait for them. A task that had already failed is logged once,
    by name, instead of vanishing; cancelling the caller still propagates."""
    for task in tasks:
        task.cancel()
    results = await asyncio.gather(*tasks, return_exceptions=True)
    for task, result in zip(tasks, results, strict=True):
        if isinstance(result, Exception):
            log.error(
                "background task failed",
                extra={
                    "event": "autoscaler.task_failed",
                    "task": task.get_name(),
                    "error": repr(result)[:300],
                },
            )
