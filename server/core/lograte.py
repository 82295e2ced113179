"""Log lines a client can cause, held to one per interval for each kind.

A refused request or packet is logged so an operator sees it; without a bound, an
unauthenticated client (or many) could turn refusals into a log flood. A
`LogLimiter` writes the first line of a kind, then at most one line per
`interval` seconds for it, each saying how many it held back since the last
(`suppressed`). The kinds are a fixed set of event names, so its state is bounded.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any


class LogLimiter:
    __slots__ = ("_clock", "_held", "_interval", "_last", "_logger")

    def __init__(
        self,
        logger: logging.Logger,
        interval: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._logger = logger
        self._interval = interval
        self._clock = clock
        self._last: dict[str, float] = {}  # kind -> when its last line was written
        self._held: dict[str, int] = {}  # kind -> lines held back since

    def log(self, level: int, msg: str, extra: dict[str, Any], key: str | None = None) -> bool:
        """Write `msg` unless a line of its kind (`key`, else `extra["event"]`) was
        written less than `interval` seconds ago; True when it was written."""
        kind = key if key is not None else str(extra.get("event"))
        now = self._clock()
        last = self._last.get(kind)
        if last is not None and now - last < self._interval:
            self._held[kind] = self._held.get(kind, 0) + 1
            return False
        self._last[kind] = now
        suppressed = self._held.pop(kind, 0)
        self._logger.log(level, msg, extra={**extra, "suppressed": suppressed})
        return True

    def info(self, msg: str, extra: dict[str, Any], key: str | None = None) -> bool:
        return self.log(logging.INFO, msg, extra, key)

    def warning(self, msg: str, extra: dict[str, Any], key: str | None = None) -> bool:
        return self.log(logging.WARNING, msg, extra, key)
