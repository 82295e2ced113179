"""Run a scenario from one process or several, feeding ticks to a display as they come.

With `workers > 1` each worker process runs its share of the arrivals on its own
event loop (and core) and sends its ticks over a queue; the parent merges them.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from iofleet.loadtest.engine import Auth, Engine
from iofleet.loadtest.scenario import Scenario
from iofleet.loadtest.stats import Tick, Totals

try:
    import uvloop

    HAVE_UVLOOP = True
except ImportError:  # pragma: no cover - uvloop is a dependency except on Windows
    HAVE_UVLOOP = False


@dataclass(frozen=True)
class RunOptions:
    target: str
    auth: Auth
    workers: int = 1
    seed: int | None = None
    grace: float = 5.0


def event_loop_runner(coroutine: Any) -> Any:
    """asyncio.run on uvloop when installed (the generator's own speed matters)."""
    if HAVE_UVLOOP:
        return uvloop.run(coroutine)
    return asyncio.run(coroutine)


def run_scenario(
    scenario: Scenario,
    options: RunOptions,
    on_tick: Callable[[Tick], None],
    totals: Totals | None = None,
) -> Totals:
    """Run every phase; `on_tick` sees each merged second as it completes."""
    totals = totals if totals is not None else Totals()

    def take(tick: Tick) -> None:
        totals.add(tick)
        on_tick(totals.get(tick.second))

    if options.workers <= 1:
        engine = Engine(
            scenario, options.target, options.auth, seed=options.seed, grace=options.grace
        )
        event_loop_runner(engine.run(take))
        return totals
    context = multiprocessing.get_context("spawn")
    ticks: multiprocessing.Queue[Tick | None] = context.Queue()
    processes = [
        context.Process(target=_worker_main, args=(scenario, options, worker, ticks), daemon=True)
        for worker in range(options.workers)
    ]
    for process in processes:
        process.start()
    running = len(processes)
    try:
        while running:
            try:
                tick = ticks.get(timeout=0.5)
            except queue.Empty:
                if not any(p.is_alive() for p in processes):
                    break  # a worker died without its sentinel
                continue
            if tick is None:
                running -= 1
            else:
                take(tick)
    finally:
        for process in processes:
            process.join(timeout=scenario.duration + options.grace + 10)
            if process.is_alive():
                process.terminate()
    return totals


def _worker_main(
    scenario: Scenario, options: RunOptions, worker: int, ticks: multiprocessing.Queue[Tick | None]
) -> None:
    engine = Engine(
        scenario,
        options.target,
        options.auth,
        worker=worker,
        workers=options.workers,
        seed=options.seed,
        grace=options.grace,
    )
    try:
        with contextlib.suppress(KeyboardInterrupt):
            event_loop_runner(engine.run(ticks.put))
    finally:
        ticks.put(None)
