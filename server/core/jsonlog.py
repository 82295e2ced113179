"""One-line JSON logs carrying the node id and an event name.

Use `log.info("text", extra={"event": "drain.start", "count": 3})`: every extra
key becomes a field. Nothing here logs request payloads, tokens or secrets.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable

import orjson

# Attributes every LogRecord has; anything else on a record came from `extra`.
_STANDARD_ATTRS = frozenset(vars(logging.makeLogRecord({}))) | {"message", "asctime"}


class JsonFormatter(logging.Formatter):
    def __init__(self, node_id: str) -> None:
        super().__init__()
        self.node_id = node_id

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, object] = {
            "ts": round(record.created, 3),
            "level": record.levelname.lower(),
            "node": self.node_id,
            "logger": record.name,
            "event": getattr(record, "event", record.name),
            "msg": record.getMessage(),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and key not in entry:
                entry[key] = value
        if record.exc_info and record.exc_info[0] is not None:
            # One line still: the exception type and message, not a traceback.
            entry["error"] = f"{record.exc_info[0].__name__}: {record.exc_info[1]}"
        return orjson.dumps(entry, default=str).decode()


def configure_logging(node_id: str, level: str = "INFO") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(JsonFormatter(node_id))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # aiohttp's access log would be one line per long-poll: too loud at INFO.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.Formatter.converter = time.gmtime


class OncePerBurst:
    """Lets one log line through per `window` seconds and counts the rest.

    Used where a failure can repeat thousands of times a second (Redis gone):
    the log says it once with how many were folded into it.
    """

    def __init__(self, window: float = 10.0) -> None:
        self.window = window
        self._last: float | None = None
        self.suppressed = 0

    def should_log(self, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        if self._last is None or now - self._last >= self.window:
            self._last = now
            return True
        self.suppressed += 1
        return False

    def take_suppressed(self) -> int:
        count, self.suppressed = self.suppressed, 0
        return count

    def reset(self) -> None:
        self._last = None
        self.suppressed = 0


class OncePerBurstFilter(logging.Filter):
    """A logging filter that folds the records `matches` picks into one WARNING
    line per `window` seconds, as `event`, with how many it folded (`suppressed`).
    Other records pass untouched.

    For failures a client can cause at will: aiohttp logs each malformed request at
    ERROR, so without this anyone could flood the node's logs unauthenticated."""

    def __init__(
        self, event: str, matches: Callable[[logging.LogRecord], bool], window: float = 10.0
    ) -> None:
        super().__init__()
        self.event = event
        self._matches = matches
        self._burst = OncePerBurst(window)

    def filter(self, record: logging.LogRecord) -> bool:
        if not self._matches(record):
            return True
        if not self._burst.should_log():
            return False
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.event = self.event
        record.suppressed = self._burst.take_suppressed()
        return True
