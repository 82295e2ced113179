"""Where one region's servers publish, whatever its Redis: one Redis or a Redis Cluster.

Two regions of one fleet may differ: one runs a single Redis, the other a Redis
Cluster (`redis_mode: cluster`), where the servers use sharded pub/sub and, with
recovery on, hash-tagged names (`server.sio.cluster.recovery.KeyLayout`: a room's
channel is `<channel>#room#{<channel>#<namespace>}#<room>`, a namespace's other
recoverable emits go on `<channel>#room#{<channel>#<namespace>}`, one stream per
namespace). The relay never copies those rules: it asks `KeyLayout` for the far
region's channel of each message (`channel_of`), and reads a far region's interest
(room channels in the far layout) back into this region's names (`near_name`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from server.net.redis_topology import RedisEndpoint
from server.sio.cluster.recovery import KeyLayout


@dataclass(frozen=True)
class RegionLayout:
    """The names on one region's Redis, as its servers use them."""

    keys: KeyLayout
    cluster: bool  # sharded pub/sub (SSUBSCRIBE, SPUBLISH), routed by slot

    @classmethod
    def of(cls, channel: str, endpoint: RedisEndpoint, recovery: bool) -> RegionLayout:
        cluster = endpoint.topology == "cluster"
        # Hash tags only with recovery on: the emit script must stay in one slot
        # (`RecoveringFanoutManager`); without it the servers use the plain names.
        return cls(KeyLayout(channel, sharded=cluster and recovery), cluster)

    def channel_of(self, message: dict[str, Any], streamed: bool) -> str:
        """The channel this region's servers would publish `message` on."""
        return self.keys.channel_of(message, streamed)

    def stream_of(self, channel: str) -> str:
        """The recovery stream an emit published on `channel` is appended to."""
        return self.keys.stream_of_channel(channel)

    def namespace_channel(self, namespace: str) -> str | None:
        """The channel of a namespace's recoverable emits that are not to one room, if
        this layout has one (a Cluster with recovery; else they use the shared channel)."""
        return self.keys.namespace_channel(namespace) if self.keys.sharded else None

    def namespace_of(self, channel: bytes) -> str | None:
        """The namespace of a namespace channel of this layout, else None."""
        parsed = self.keys.room_of(channel.decode(errors="replace"))
        return parsed[0] if parsed is not None and parsed[1] is None else None

    def near_name(self, far_channel: bytes, far: RegionLayout) -> bytes | None:
        """A room (or namespace) channel of the `far` layout under this layout's name;
        None if this layout has no such channel (a namespace's emits travel on the
        shared channel here, which always crosses)."""
        if far.keys == self.keys:
            return far_channel
        parsed = far.keys.room_of(far_channel.decode(errors="replace"))
        if parsed is None:
            return None
        namespace, room = parsed
        if room is None:
            name = self.namespace_channel(namespace)
            return name.encode() if name is not None else None
        return self.keys.room_channel(namespace, room).encode()
