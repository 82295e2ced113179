"""When the drain closes how many connections: a pure plan, no I/O, no clock.

`server.node.drain.DrainController` runs the plan; keeping it apart lets the import
contracts check that the arithmetic of the drain touches nothing outside.
"""

from __future__ import annotations

import random

# One batch every half second at most: small enough to spread reconnects,
# large enough not to spin the loop.
BATCH_TICK_SECONDS = 0.5


def plan_batches(
    count: int, drain_seconds: float, rng: random.Random, tick: float = BATCH_TICK_SECONDS
) -> list[tuple[float, int]]:
    """(offset from the start of closing, how many to close) for each batch.

    The window is cut into equal slots, one batch per slot, at a random point
    inside its slot: batches stay in order, the last one ends before the
    deadline, and nodes draining together do not close in lockstep.
    """
    if count <= 0:
        return []
    if drain_seconds <= 0:
        return [(0.0, count)]
    slots = max(1, min(count, int(drain_seconds / tick)))
    base, extra = divmod(count, slots)
    width = drain_seconds / slots
    return [((i + rng.random()) * width, base + (1 if i < extra else 0)) for i in range(slots)]
