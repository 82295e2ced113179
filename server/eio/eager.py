"""Running a coroutine outside any task until it first waits.

Creating a task and scheduling its first step costs more than most of the
coroutines iofleet runs per packet or per connect, which finish without ever
waiting. `step_eagerly` runs one up to its first wait, right where it is called;
only one that does wait goes on in a task (the caller's choice of task).

What runs this way must not need a current task (`asyncio.current_task()`,
`asyncio.timeout`): application handlers are not run this way.
"""

from __future__ import annotations

from collections.abc import Coroutine
from typing import Any


class _Resume:
    """Awaiting this drives, to its end, a coroutine that was started outside a
    task and suspended on `pending`: what a Task does for its coroutine, so the
    rest of it runs in the awaiting task."""

    __slots__ = ("_coro", "_pending")

    def __init__(self, coro: Coroutine[Any, Any, Any], pending: Any) -> None:
        self._coro = coro
        self._pending = pending

    def __await__(self) -> Any:
        coro, value = self._coro, self._pending
        while True:
            try:
                sent = yield value
            except BaseException as exc:  # thrown into the task: cancellation
                try:
                    value = coro.throw(exc)
                except StopIteration as stop:
                    return stop.value
            else:
                try:
                    value = coro.send(sent)
                except StopIteration as stop:
                    return stop.value


async def _finish(rest: _Resume) -> Any:
    return await rest


def step_eagerly(coro: Coroutine[Any, Any, Any]) -> Coroutine[Any, Any, Any] | None:
    """Run `coro` here until it finishes (None) or first waits: then the
    returned coroutine, run in a task, finishes it. An exception `coro` raises
    before it waits is raised here."""
    try:
        pending = coro.send(None)
    except StopIteration:
        return None
    return _finish(_Resume(coro, pending))
