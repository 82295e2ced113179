"""Ending background tasks for certain.

A single `task.cancel()` can be lost, and a shutdown or a hand-over that awaits the
task then waits forever:

- under uvloop, a cancel that lands while redis-py is still opening its connection
  (the listener then reads on as if never cancelled; a server that failed to bind its
  port hung at exit that way);
- on Python 3.11, `asyncio.wait_for` returns its inner result and drops a cancel that
  arrives in the loop turn in which that inner await completes (CPython gh-86296,
  fixed in 3.12). A relay woken from SIGSTOP has replies waiting on every socket, so
  its loops hit that turn and kept running after it stood by (both replicas active).

So the cancel is repeated until the task ends.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from typing import Any

CANCEL_REPEAT_SECONDS = 0.1


async def cancel_and_wait(task: asyncio.Task[Any], timeout: float) -> bool:
    """Cancel `task` and wait up to `timeout` s for it to end; True if it did.
    The cancel is repeated every CANCEL_REPEAT_SECONDS (see the module's text)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not task.done():
        left = deadline - asyncio.get_running_loop().time()
        if left <= 0:
            return False
        task.cancel()
        await asyncio.wait({task}, timeout=min(CANCEL_REPEAT_SECONDS, left))
    return True


async def cancel_all(tasks: Iterable[asyncio.Task[Any]], timeout: float) -> list[str]:
    """Cancel every task and wait for them all, up to `timeout` s in all, repeating
    each cancel as `cancel_and_wait` does; the names of the tasks still running."""
    tasks = list(tasks)
    for task in tasks:
        task.cancel()
    deadline = asyncio.get_running_loop().time() + timeout
    for task in tasks:
        await cancel_and_wait(task, max(0.0, deadline - asyncio.get_running_loop().time()))
    for task in tasks:  # retrieve what they raised, so asyncio logs no "never retrieved"
        if task.done() and not task.cancelled():
            task.exception()
    return [task.get_name() for task in tasks if not task.done()]
