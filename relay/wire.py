"""What the relay reads and writes on Redis, with no I/O: the servers' channel names
(`server.sio.cluster.fanout` owns them), the relay's own keys, and the rewrite of a
message for the far region.

A message the relay republishes carries `iofleet_origin` (the region it came from);
a relay never forwards a message that carries it, so each message crosses each
link at most once and never comes back (no loop, no echo). The servers ignore the
field. A message that came through the recovery stream (it has an `offset`, a
stream id of its region) loses it: the far region's stream gives it its own; the
link keeps it beside the message, to write what crossed (`relay.catchup`).

What a region announces (its interest) is the channels its servers subscribe that
matter to a far region: room channels (who has members of which room) and each
node's heartbeat channel (`server.sio.cluster.fanout.heartbeat_channel_name`: the
node ids, which prefix its sids, and the host ids, which address its acks). A
message on the shared channel addressed to one socket (an emit to a sid, a remote
join, leave or disconnect) or to one node (an ack) then crosses only to the region
that announced that node (`addressee`, `Members`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any, Literal, NamedTuple

import orjson

from server.eio.engine import node_of_sid
from server.node.region_links import relay_status_key
from server.sio.cluster.fanout import (
    HEARTBEAT_INFIX,
    QUERY_SUFFIX,
    REPLY_INFIX,
    ROOM_CHANNEL_INFIX,
    heartbeat_channel_owner,
)

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
    def heartbeat_pattern(self) -> str:
        """Every node's own channel (`server.sio.cluster.fanout.heartbeat_channel_name`)."""
        return f"{self.base}{HEARTBEAT_INFIX}*"

    @property
    def query(self) -> str:
        return f"{self.base}{QUERY_SUFFIX}"

    def reply(self, name: str) -> str:
        return f"{self.base}{REPLY_INFIX}{name}"

    @property
    def interest_key(self) -> str:
        """A set: the room and heartbeat channels this region's servers subscribe (its
        interest: rooms with members here, and the nodes that run here)."""
        return f"{self.base}#relay#interest"

    @property
    def lease_key(self) -> str:
        """Which of a region's relay replicas forwards (`relay.relay.Relay._hold_lease`)."""
        return f"{self.base}#relay#lease"

    @property
    def status_key(self) -> str:
        """The active relay's links, for the servers' `/admin/status`
        (`server.node.region_links`)."""
        return relay_status_key(self.base)

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
    offset: str | None = None  # its near stream id, if streamed (`relay.catchup`)
    stream: str | None = None  # the near stream it came through, if streamed


def decode(data: bytes) -> dict[str, Any] | None:
    """A pub/sub message as the servers write it (a JSON object), or None."""
    try:
        message = orjson.loads(data)
    except orjson.JSONDecodeError:
        return None
    return message if isinstance(message, dict) else None


def forward_of(
    message: dict[str, Any], channel: str, region: str, now: float, stream: str | None = None
) -> Forward | None:
    """`message` (heard on `channel` of `region`, whose recovery stream for that channel
    is `stream`) as it goes to a far region; None if it came from a far region itself."""
    if ORIGIN in message:
        return None
    offset = message.pop(OFFSET, None)
    streamed = isinstance(offset, str)
    message[ORIGIN] = region
    if not streamed:
        return Forward(channel, orjson.dumps(message), False, now)
    return Forward(channel, orjson.dumps(message), True, now, offset, stream)


def interest_change(data: bytes) -> tuple[str, bytes] | None:
    """An interest change as (`+`|`-`|`*`, room channel), or None if malformed."""
    if data == INTEREST_ALL:
        return "*", b""
    if data[:1] in (b"+", b"-") and len(data) > 1:
        return data[:1].decode(), data[1:]
    return None


class Addressee(NamedTuple):
    """The one node a shared-channel message is for: by its node id (a sid's prefix)
    or by its host id (an ack goes back to the node that asked)."""

    kind: Literal["node", "host"]
    name: str


# Messages addressed to one socket by its `sid` field (python-socketio's pub/sub manager).
SID_METHODS = frozenset({"disconnect", "enter_room", "leave_room"})


def addressee(message: dict[str, Any]) -> Addressee | None:
    """Whom a shared-channel message is for, when it is one node; None when every
    node may be (a namespace emit, several rooms, `close_room`, a fleet query).
    An emit to a room named like a sid (`SID_PATTERN`) is taken for that sid's own room."""
    method = message.get("method")
    if method == "callback":
        host = message.get("host_id")
        return Addressee("host", host) if isinstance(host, str) and host else None
    if method == "emit":
        node = node_of_sid(message.get("room"))
    elif method in SID_METHODS:
        node = node_of_sid(message.get("sid"))
    else:
        return None
    return Addressee("node", node) if node is not None else None


@dataclass
class Members:
    """What one region announced: the room channels its servers subscribe, and its
    nodes (node ids, host ids) from their heartbeat channels. A node id is counted,
    not kept in a set: a node restarted under the same id has a new heartbeat channel
    (a new host id), announced before the old one is withdrawn."""

    channels: Channels
    rooms: set[bytes] = field(default_factory=set)
    nodes: Counter[str] = field(default_factory=Counter)
    hosts: set[str] = field(default_factory=set)

    def replace(self, members: Iterable[bytes]) -> None:
        self.rooms, self.nodes, self.hosts = set(), Counter(), set()
        for member in members:
            self.add(member)

    def add(self, member: bytes) -> None:
        if member.startswith(self.channels.room_prefix.encode()):
            self.rooms.add(member)
        elif (owner := self._owner(member)) is not None and owner[1] not in self.hosts:
            self.nodes[owner[0]] += 1
            self.hosts.add(owner[1])

    def discard(self, member: bytes) -> None:
        if member.startswith(self.channels.room_prefix.encode()):
            self.rooms.discard(member)
        elif (owner := self._owner(member)) is not None and owner[1] in self.hosts:
            self.hosts.discard(owner[1])
            self.nodes[owner[0]] -= 1
            if self.nodes[owner[0]] <= 0:
                del self.nodes[owner[0]]

    def has(self, target: Addressee) -> bool:
        return target.name in (self.nodes if target.kind == "node" else self.hosts)

    def _owner(self, member: bytes) -> tuple[str, str] | None:
        try:
            return heartbeat_channel_owner(member.decode(), self.channels.base)
        except UnicodeDecodeError:
            return None
