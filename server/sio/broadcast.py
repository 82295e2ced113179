"""Broadcasts encoded and framed once; each recipient costs a write of ready bytes.

python-socketio 5.18's `AsyncManager.emit` encodes a broadcast once, then makes
one asyncio task per recipient, each going through `AsyncServer._send_eio_packet`,
python-engineio's `send_packet` and `AsyncSocket.send` (a ping check, a queue
put, a log call), then wakes that connection's writer task, which has aiohttp
build the WebSocket frame again. For a room of 2,000 that is 2,000 tasks, 2,000
writer wake-ups and 2,000 frame builds for one message.

`BroadcastEmit.emit` replaces that loop: it builds the Socket.IO packet once and
hands its text with the recipients to `IofleetServer.hand_over` (the one place
packets leave for clients and are counted), which has the Engine.IO packet and
the WebSocket frame built once (server frames are unmasked, so every recipient
gets the same bytes) and gives them to `IofleetEngine.deliver`, which gives each
recipient, synchronously:
- over WebSocket with nothing queued before it: the frame is appended to that
  connection's frames for this loop pass, and when the pass ends one
  `transport.write` sends them all (a burst of broadcasts costs a recipient one
  syscall, not one per message);
- otherwise (polling, an upgrade in progress, packets pending, a frame large
  enough for per-connection deflate, a transport over its high-water mark): the
  one shared, pre-encoded packet on the connection's queue, so order is kept
  and its writer (or pending GET) sends it as any other packet.
The outbound bound and slow-consumer eviction live on the socket
(`server.eio.socket.EngineSocket.send_ready`). A packet with binary attachments
is handed over the same way (its parts queued, in order, per recipient).

Only emits with a callback (one ack id per recipient) go to the library's loop,
which sends each through `IofleetServer._send_packet`, so `hand_over` too. Mix it in after the
library's pub/sub manager, before `socketio.AsyncManager`, so that both local
emits and the emits a Redis listener hands to `AsyncManager.emit` come here:
`class M(RoomIndex, socketio.AsyncRedisManager, BroadcastEmit)`.
`tests/server/test_upstream_surface.py` pins the library surface this uses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import socketio
from socketio import packet as sio_packet

from server.sio.rooms import RoomIndex


class Sender(Protocol):
    """What the Socket.IO server offers a broadcast (`IofleetServer.hand_over`)."""

    def hand_over(self, eio_sids: Sequence[str], encoded: str | list[Any]) -> int: ...


def as_arguments(data: Any) -> list[Any]:
    """The event's arguments as python-socketio spreads them (a tuple is several)."""
    if isinstance(data, tuple):
        return list(data)
    return [] if data is None else [data]


class BroadcastEmit(socketio.AsyncManager):  # type: ignore[misc]
    """python-socketio's manager `emit`, with one encode and one frame per broadcast."""

    server: Any

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str,
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        sender: Sender | None = self.server if hasattr(self.server, "hand_over") else None
        if callback is not None or sender is None:
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, to=to
            )
            return
        room = to or room
        if namespace not in self.rooms:
            return
        pkt = self.server.packet_class(
            sio_packet.EVENT, namespace=namespace, data=[event, *as_arguments(data)]
        )
        skip = skip_sid if isinstance(skip_sid, list) else [skip_sid]
        recipients = [
            eio_sid for sid, eio_sid in self.get_participants(namespace, room) if sid not in skip
        ]
        if recipients:
            sender.hand_over(recipients, pkt.encode())


class LocalBroadcastManager(RoomIndex, BroadcastEmit):
    """One node, no Redis: python-socketio's in-memory manager, indexed rooms,
    broadcasts framed once."""
