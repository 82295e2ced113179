"""What the relay reads and writes on Redis, with no I/O: the servers' channel names
(`server.sio.cluster.fanout` owns them), the relay's own keys, and the rewrite of a
message for the far region.

A message the relay republishes carries `iofleet_origin` (the region it came from);
a relay never forwards a message that carries it, so each message crosses each
link at most once and never comes back (no loop, no echo). The servers ignore the
field. A message that came through the recovery stream (it has an `offset`, a
stream id of its region) loses it: the far region's stream gives it its own.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson

from server.sio.cluster.fanout import QUERY_SUFFIX, REPLY_INFIX, ROOM_CHANNEL_INFIX

ORIGIN = "iofleet_origin"
OFFSET = "offset"
INTEREST_ALL = b"*"  # an interest change meaning "read the whole set again"


@dataclass(frozen=True)
class Channels:
    """The names on one region's Redis, from the servers' `IOFLEET_REDIS_CHANNEL`."""

    base: str

    @property
    def room_prefix(self) -> str:
        return f"{self.base}{ROOM_CHANNEL_INFIX}"

    @property
    def room_pattern(self) -> str:
        return f"{self.room_prefix}*"

    @property
    def query(self) -> str:
        return f"{self.base}{QUERY_SUFFIX}"

    def reply(self, name: str) -> str:
        return f"{self.base}{REPLY_INFIX}{name}"

    @property
    def interest_key(self) -> str:
        """A set: the room channels this region's servers subscribe (its interest)."""
        return f"{self.base}#relay#interest"

    @property
    def lease_key(self) -> str:
        """Which of a region's relay replicas forwards (`relay.relay.Relay._hold_lease`)."""
        return f"{self.base}#relay#lease"

    @property
    def interest_changes(self) -> str:
        """`+<room channel>`, `-<room channel>` or `*`, after each change of the set."""
        return f"{self.base}#relay#interest#changes"


class Forward(NamedTuple):
    """One message on its way to a far region."""

    channel: str
    message: bytes  # JSON, origin marked, without the near region's offset
    streamed: bool  # it came through the recovery stream: goes through the far one
    at: float  # monotonic time the relay heard it


def decode(data: bytes) -> dict[str, Any] | None:
    """A pub/sub message as the servers write it (a JSON object), or None."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def forward_of(message: dict[str, Any], channel: str, region: str, now: float) -> Forward | None:
    """`message` (heard on `channel` of `region`) as it goes to a far region; None if
    it came from a far region itself."""
    if ORIGIN in message:
        return None
    streamed = isinstance(message.pop(OFFSET, None), str)
    message[ORIGIN] = region
    return Forward(channel, orjson.dumps(message), streamed, now)


def interest_change(data: bytes) -> tuple[str, bytes] | None:
    """An interest change as (`+`|`-`|`*`, room channel), or None if malformed."""
    if data == INTEREST_ALL:
        return "*", b""
    if data[:1] in (b"+", b"-") and len(data) > 1:
        return data[:1].decode(), data[1:]
    return None
