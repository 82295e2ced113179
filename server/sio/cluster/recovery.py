"""Connection state recovery (Socket.IO v4.6+), backed by a Redis Stream.

A stock client that drops for less than `IOFLEET_RECOVERY_WINDOW_SECONDS` and
reconnects to any node gets the same sid, its rooms, and every event it missed,
in order, once: the protocol's `pid`/`offset` handshake fields and the client's
`socket.recovered`. python-socketio has no recovery on either side; this module
is iofleet's own, at the manager's hooks (STYLE.md #5).

- Offsets are stream ids. Every recoverable emit (an EVENT without an ack
  callback or binary attachments: to a room, a sid or a whole namespace) is
  appended to `<channel>#stream` and published on its usual fan-out channel by
  ONE Lua script (`EMIT_SCRIPT`), so the stream's order is the pub/sub order.
  On a Redis Cluster a script stays in one slot and a client's offset names one
  position in one stream: one stream per namespace, with that namespace's
  channels in its slot (`KeyLayout`, the one owner of the key names).
  The stream is trimmed by length (`IOFLEET_RECOVERY_MAX_MESSAGES`, approximate)
  and by age (the window). The offset travels as the last argument of the event,
  as the Node server sends it, added once for every recipient (the broadcast is
  still encoded and framed once, `server.sio.broadcast`).
- A node delivers its own recoverable emits when they come back from Redis, as
  every other node does: all nodes deliver in the stream's one order, so what a
  client got is a prefix of the stream (filtered by its rooms) and "the entries
  after its offset that concern it" has no gap and no duplicate. While Redis is
  away (the fan-out outbox holds messages), an emit is delivered here at once
  without an offset, as with recovery off: those events cannot be recovered.
- Sessions: a random private id (`pid`, in the CONNECT answer beside `sid`)
  names a hash `<channel>#session#<pid>` (sid, namespace, user, node, one
  `room:<name>` field per room), written when the socket connects, kept current
  on joins and leaves (queued, pipelined, never awaited by a handler), expiring
  one window after the last refresh: a node killed with SIGKILL leaves usable
  sessions. A clean disconnect (a drain too) stamps the hash with its time.
- Reconnect: a CONNECT with `pid` and `offset` is authenticated as usual first
  (`server.sio.server`); the session must exist, belong to the same user and namespace,
  and its offset must still be in the stream. Then the socket gets its old sid
  (`RecoveringFanoutManager.pre_connect`) and rooms before the application's
  `connect` handler runs (Node emits `connection` on a recovery too; the handler
  sees `recovered: True` in `sio.get_session(sid)`), and after the CONNECT
  answer the entries after the offset are replayed in batches. Live events for
  that socket that arrive meanwhile are held (`Handoff`) and sent after the
  replay, minus those the replay already sent.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from socketio import packet as sio_packet

# The exception python-socketio's own pre_connect catches (from bidict, its dependency).
from socketio.base_manager import ValueDuplicationError

from server.core.jsonlog import OncePerBurst
from server.core.metrics import Metrics
from server.net.redis_topology import (
    ChannelSubscriber,
    RedisClient,
    ShardChannelMoved,
    ShardedSubscriber,
)
from server.sio.broadcast import as_arguments
from server.sio.cluster.fanout import (
    PUBLISH_TIMEOUT_SECONDS,
    ROOM_CHANNEL_INFIX,
    FanoutManager,
    QueuedPublish,
    room_channel_name,
    routed_room,
)

log = logging.getLogger("iofleet.recovery")

STREAM_SUFFIX = "#stream"
SESSION_INFIX = "#session#"
ROOM_FIELD = "room:"
# The application's session (`save_session`), as JSON: what Node's `socket.data` is.
DATA_FIELD = "data"
REPLAY_BATCH = 500
# How long a recovery waits for this node's subscription to cover the socket's rooms.
SUBSCRIBE_WAIT_SECONDS = 2.0
# How long queued session writes wait for more to join their pipeline.
WRITE_GATHER_SECONDS = 0.01
# Session writes waiting for Redis, at most (oldest dropped first, logged).
MAX_QUEUED_WRITES = 100_000

# XADD the message, trim by length (approximate, whole macro nodes) and by age,
# then PUBLISH it with its stream id added as "offset" (the message is a JSON
# object: its closing brace is replaced). One script: nothing runs between the
# two, so pub/sub order is stream order.
EMIT_SCRIPT = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[3], '*', 'm', ARGV[2])
local now = redis.call('TIME')
local oldest = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[4])
redis.call('XTRIM', KEYS[1], 'MINID', '~', string.format('%.0f', oldest))
redis.call('PUBLISH', ARGV[1], string.sub(ARGV[2], 1, -2) .. ',"offset":"' .. id .. '"}')
return id
"""
# The same on a Redis Cluster: SPUBLISH (sharded pub/sub), the channel declared as a
# key, so Redis (and redis-py, routing the script) checks it shares the stream's slot.
SHARDED_EMIT_SCRIPT = EMIT_SCRIPT.replace("'PUBLISH', ARGV[1]", "'SPUBLISH', KEYS[2]")
assert SHARDED_EMIT_SCRIPT != EMIT_SCRIPT

OUTCOMES = ("recovered", "unknown_session", "offset_trimmed", "auth_mismatch", "in_use", "error")


def stream_id(offset: str) -> tuple[int, int] | None:
    """A Redis stream id `ms-seq` as numbers (ordered), or None if it is not one."""
    ms, dash, seq = offset.partition("-")
    if not dash or not ms.isdigit() or not seq.isdigit():
        return None
    return int(ms), int(seq)


def event_arguments(message: dict[str, Any]) -> list[Any]:
    """An emit message's event arguments, as python-socketio's listener spreads them."""
    data = message["data"]
    if isinstance(data, list):
        return as_arguments(data[0] if len(data) == 1 else tuple(data))
    return as_arguments(data)


def data_of(fields: dict[str, str]) -> dict[str, Any]:
    """The application's session kept in a session record ({} if none or unreadable)."""
    try:
        data = orjson.loads(fields.get(DATA_FIELD) or "{}")
    except orjson.JSONDecodeError:
        return {}
    return data if isinstance(data, dict) else {}


def concerns(message: dict[str, Any], sid: str, namespace: str, rooms: set[str]) -> bool:
    """Whether an emit message reaches the socket `sid` in `rooms` (its own room aside)."""
    if message.get("method") != "emit" or (message.get("namespace") or "/") != namespace:
        return False
    skip = message.get("skip_sid")
    if skip == sid or (isinstance(skip, list) and sid in skip):
        return False
    room = message.get("room")
    if room is None:
        return True
    targets = [room] if isinstance(room, str) else room
    return any(target == sid or target in rooms for target in targets)


def hash_tag(key: str) -> str:
    """What Redis Cluster hashes of `key`: the text between its first `{` and the
    first `}` after it, if not empty; else the whole key."""
    start = key.find("{")
    end = key.find("}", start + 1) if start >= 0 else -1
    return key[start + 1 : end] if end > start + 1 else key


@dataclass(frozen=True)
class KeyLayout:
    """Where recovery keeps its keys and publishes its emits: the one owner of that layout.

    One Redis (or Sentinel): one stream, `<channel>#stream`, and the fan-out's channels.
    A Redis Cluster (`sharded`): the emit script must stay in one slot, and a client's
    offset is one position in one stream, so everything that can reach one socket (its
    rooms, its sid, its whole namespace) is one stream per namespace, in the slot of the
    hash tag `{<channel>#<namespace>}`, with the namespace's room channels
    (`<channel>#room#{<channel>#<namespace>}#<room>`) and a namespace channel for its
    other emits (`<channel>#room#{<channel>#<namespace>}`). Sessions are looked up by
    pid: `<channel>#session#<pid>` either way, spread over the slots.
    """

    channel: str
    sharded: bool = False

    def tag(self, namespace: str) -> str:
        return "{" + f"{self.channel}#{namespace}" + "}"

    def room_channel(self, namespace: str, room: str) -> str:
        if not self.sharded:
            return room_channel_name(self.channel, namespace, room)
        return f"{self.namespace_channel(namespace)}#{room}"

    def namespace_channel(self, namespace: str) -> str:
        """The channel of a namespace's recoverable emits that are not to one room (a
        Cluster only: on one Redis they travel on the fan-out's shared channel)."""
        return f"{self.channel}{ROOM_CHANNEL_INFIX}{self.tag(namespace)}"

    def channel_of(self, message: dict[str, Any], streamed: bool = True) -> str:
        """The channel a server of this layout publishes `message` on: its room's when the
        fan-out routes the room (`routed_room`), else the shared channel, or on a Cluster
        its namespace's for a recoverable emit (`streamed`: through the emit script). The
        relay recomputes it for a stream entry (catch-up) and for a far region's message."""
        routed = routed_room(message)
        if routed is not None:
            return self.room_channel(*routed)
        if streamed and self.sharded:
            return self.namespace_channel(str(message.get("namespace") or "/"))
        return self.channel

    def room_of(self, channel: str) -> tuple[str, str | None] | None:
        """`(namespace, room)` of a room channel of this layout, `(namespace, None)` of a
        namespace channel, None for any other name. One Redis: the namespace ends at
        the first `#` after the prefix (a namespace holding `#` is read wrongly)."""
        prefix = f"{self.channel}{ROOM_CHANNEL_INFIX}"
        if not channel.startswith(prefix):
            return None
        rest = channel[len(prefix) :]
        if not self.sharded:
            namespace, sep, room = rest.partition("#")
            return (namespace, room) if sep else None
        tag = "{" + f"{self.channel}#"
        if not rest.startswith(tag):
            return None
        namespace, brace, tail = rest[len(tag) :].partition("}")
        if not brace:
            return None
        if not tail:
            return namespace, None
        return (namespace, tail[1:]) if tail.startswith("#") else None

    def stream(self, namespace: str) -> str:
        if not self.sharded:
            return f"{self.channel}{STREAM_SUFFIX}"
        return self.stream_of_channel(self.namespace_channel(namespace))

    def stream_of_channel(self, channel: str) -> str:
        """The stream an emit published on `channel` is appended to: on a Cluster, the
        one in the channel's slot (the same hash tag, whatever the names hold)."""
        if not self.sharded:
            return f"{self.channel}{STREAM_SUFFIX}"
        return f"{self.channel}{STREAM_SUFFIX}#" + "{" + hash_tag(channel) + "}"

    def session(self, pid: str) -> str:
        return f"{self.channel}{SESSION_INFIX}{pid}"


@dataclass
class Session:
    """A session record as stored in Redis."""

    pid: str
    sid: str
    namespace: str
    user: str
    rooms: set[str] = field(default_factory=set)
    data: dict[str, Any] = field(default_factory=dict)  # the application's session


@dataclass
class Handoff:
    """A recovering socket: live events for it wait here until the replay is done."""

    eio_sid: str
    namespace: str
    session: Session
    offset: str
    held: list[tuple[tuple[int, int], str, list[Any]]] = field(default_factory=list)


class SessionWrites:
    """Session writes queued by the synchronous room hooks and sent by one task,
    pipelined; a failure is logged (once per burst) and the batch dropped: a lost
    write costs at most that session's recovery."""

    def __init__(self, client: Callable[[], RedisClient]) -> None:
        self._client = client
        self._ops: list[Callable[[Any], object]] = []
        self._task: asyncio.Task[None] | None = None
        self._log = OncePerBurst(window=10.0)

    def add(self, op: Callable[[Any], object]) -> None:
        if len(self._ops) >= MAX_QUEUED_WRITES:
            del self._ops[0]
        self._ops.append(op)
        if self._task is None or self._task.done():
            try:
                self._task = asyncio.get_running_loop().create_task(self._flush())
            except RuntimeError:  # no loop (a unit test building the manager)
                self._task = None

    async def _flush(self) -> None:
        while self._ops:
            # Let a burst (connects, a drain) gather: one pipeline for all of it.
            await asyncio.sleep(WRITE_GATHER_SECONDS)
            ops, self._ops = self._ops, []
            pipe = self._client().pipeline(transaction=False)
            for op in ops:
                op(pipe)
            try:
                await asyncio.wait_for(pipe.execute(), PUBLISH_TIMEOUT_SECONDS)
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                if self._log.should_log():
                    log.error(
                        "recovery: session writes failed; those sessions may not recover",
                        extra={
                            "event": "recovery.session_write_failed",
                            "reason": f"{type(error).__name__}: {error}",
                            "writes": len(ops),
                            "suppressed": self._log.take_suppressed(),
                        },
                    )

    async def drain(self, timeout: float) -> None:
        """Send what is queued (shutdown), waiting at most `timeout` s."""
        if self._ops and (self._task is None or self._task.done()):
            self._task = asyncio.get_running_loop().create_task(self._flush())
        if self._task is not None:
            await asyncio.wait({self._task}, timeout=timeout)
            self._task.cancel()  # Redis did not take them in time: they are lost


class RecoveringFanoutManager(FanoutManager):
    """The Redis fan-out with connection state recovery (`IOFLEET_RECOVERY=true`)."""

    def __init__(
        self,
        url: str,
        channel: str,
        metrics: Metrics,
        window_seconds: float = 120.0,
        max_messages: int = 100_000,
        node_id: str = "node",
        outbox_messages: int = 10000,
        outbox_seconds: float = 30.0,
    ) -> None:
        super().__init__(url, channel, metrics, outbox_messages, outbox_seconds, node_id)
        self.keys = KeyLayout(channel, sharded=self.endpoint.topology == "cluster")
        self.stream_key = self.keys.stream("/")  # the default namespace's (one Redis: all's)
        self.session_prefix = self.keys.session("")
        self.window_ms = int(window_seconds * 1000)
        self.max_messages = max_messages
        self.node_id = node_id
        self.pids: dict[str, str] = {}  # sid -> pid, this node's live sessions
        self.handoffs: dict[str, Handoff] = {}  # sid -> recovering socket (empty mostly)
        self._pinned: dict[tuple[str, str], Handoff] = {}  # (eio_sid, namespace) -> recovery
        self._writes = SessionWrites(self._stream_client)
        self._emit_script: AsyncScript | None = None
        self._refresher: asyncio.Task[None] | None = None
        self._pongs: dict[bytes, asyncio.Future[None]] = {}
        self._data_log = OncePerBurst(window=10.0)

    def session_key(self, pid: str) -> str:
        return self.keys.session(pid)

    def room_channel(self, namespace: str, room: str) -> str:
        return self.keys.room_channel(namespace, room)

    def _stream_channel(self, message: dict[str, Any]) -> str:
        """The channel of a recoverable emit: on a Cluster, in its namespace's slot."""
        return self.keys.channel_of(message)

    # --- emitting: through the stream, delivered when it comes back -------------------

    async def emit(
        self,
        event: str,
        data: Any,
        namespace: str = "/",
        room: Any = None,
        skip_sid: Any = None,
        callback: Any = None,
        to: Any = None,
        **kwargs: Any,
    ) -> None:
        room = to or room
        arguments = list(data) if isinstance(data, tuple) else [data]
        if (
            kwargs.get("ignore_queue")
            or callback is not None
            or self.redis_away()
            or sio_packet.Packet.data_is_binary(arguments)
        ):
            # Not recoverable, or Redis away: python-socketio's local-first path.
            await super().emit(
                event, data, namespace, room=room, skip_sid=skip_sid, callback=callback, **kwargs
            )
            return
        # host_id "": no node (this one included) takes it for its own echo.
        message = {
            "method": "emit",
            "event": event,
            "data": arguments,
            "binary": False,
            "namespace": namespace or "/",
            "room": room,
            "skip_sid": skip_sid,
            "callback": None,
            "host_id": "",
        }
        encoded = self.json.dumps(message)
        channel = self._stream_channel(message)
        # Behind this node's other publishes, in the order they were made (the
        # emit script in the same pipeline): concurrent emits reach the stream,
        # and so every node and every replay, in one order.
        mine = {**message, "host_id": self.host_id}
        sent = self._enqueue(channel, encoded, streamed=True, outbox_message=self.json.dumps(mine))
        if await asyncio.shield(sent) is None:
            # Redis did not take it: the outbox carries it to the others; deliver here now.
            await self._handle_emit(mine)

    async def _send_batch(self, redis: Any, batch: list[QueuedPublish]) -> list[int]:
        """Plain publishes and emit scripts, in order, in one pipeline. A timeout
        after Redis ran a script means the message goes out twice (stream and
        outbox): rare, and the client sees a duplicate rather than a gap."""
        if not any(queued.streamed for queued in batch):
            return await super()._send_batch(redis, batch)
        client = self._stream_client()
        if isinstance(client, RedisCluster):
            return await self._send_batch_sharded(client, batch)
        if self._emit_script is None:
            self._emit_script = client.register_script(EMIT_SCRIPT)
        pipe = client.pipeline(transaction=False)
        for queued in batch:
            if queued.streamed:
                args: list[str | int] = [queued.channel, queued.message]
                args += [self.max_messages, self.window_ms]
                await self._emit_script(keys=[self.stream_key], args=args, client=pipe)
            else:
                pipe.publish(queued.channel, queued.message)
        results = await pipe.execute()
        return [0 if q.streamed else int(r) for q, r in zip(batch, results, strict=True)]

    async def _send_batch_sharded(
        self, client: RedisCluster, batch: list[QueuedPublish]
    ) -> list[int]:
        """The batch on a Cluster: one pipeline per run of publishes to one slot, the
        runs one after the other, so this node's publishes keep their order across
        slots as on one Redis (a burst of emits to one namespace is one run). EVAL,
        not EVALSHA: a restarted master has lost its script cache, and a cluster
        pipeline cannot load it first (Redis caches the script by its digest)."""
        counts: list[int] = []
        for run in _runs_by_slot(client, batch):
            pipe = client.pipeline(transaction=False)
            for queued in run:
                if queued.streamed:
                    stream = self.keys.stream_of_channel(queued.channel)
                    args: list[str | int] = [queued.channel, queued.message]
                    args += [self.max_messages, self.window_ms]
                    pipe.eval(SHARDED_EMIT_SCRIPT, 2, stream, queued.channel, *args)
                else:
                    pipe.spublish(queued.channel, queued.message)
            results = await pipe.execute()
            counts += [0 if q.streamed else int(r) for q, r in zip(run, results, strict=True)]
        return counts

    async def _handle_emit(self, message: dict[str, Any]) -> None:
        offset = message.get("offset")
        if not isinstance(offset, str):
            await super()._handle_emit(message)
            return
        arguments = [*event_arguments(message), offset]
        namespace = message.get("namespace") or "/"
        room, skip = message.get("room"), message.get("skip_sid")
        if self.handoffs:  # empty outside recoveries: one check on the hot path
            skip = self._hold(message, namespace, offset, arguments, skip)
        await self.emit(
            message["event"],
            tuple(arguments),
            str(namespace),
            room=room,
            skip_sid=skip,
            ignore_queue=True,
        )

    def _hold(
        self, message: dict[str, Any], namespace: str, offset: str, args: list[Any], skip: Any
    ) -> Any:
        """Keep a live event for each recovering socket it reaches; they skip it now."""
        position = stream_id(offset)
        held = []
        for sid, handoff in self.handoffs.items():
            if position is not None and concerns(
                message, sid, namespace, set(self.get_rooms(sid, namespace))
            ):
                handoff.held.append((position, message["event"], args))
                held.append(sid)
        if not held:
            return skip
        if skip is None:
            return held
        return [*(skip if isinstance(skip, list) else [skip]), *held]

    # --- sessions ---------------------------------------------------------------------

    def start_session(
        self,
        sid: str,
        namespace: str,
        eio_sid: str,
        user: str,
        data: dict[str, Any] | None = None,
    ) -> str:
        """The socket connected: its pid (the recovered one, or a new one); the
        session record is (re)written with its current rooms."""
        handoff = self.handoffs.get(sid)
        pid = handoff.session.pid if handoff is not None else secrets.token_urlsafe(16)
        self.pids[sid] = pid
        key = self.session_key(pid)
        record: dict[str, str] = {
            "sid": sid,
            "ns": namespace,
            "user": user,
            "node": self.node_id,
            "eio": eio_sid,
        }
        record.update(
            {f"{ROOM_FIELD}{room}": "1" for room in self.get_rooms(sid, namespace) if room != sid}
        )
        encoded = self._encode_data(sid, data)
        if encoded is not None:
            record[DATA_FIELD] = encoded
        window, recovered = self.window_ms, handoff is not None

        def write(pipe: Any) -> None:
            if recovered:  # a new pid's key is new: only a recovered one needs clearing
                pipe.delete(key)
            pipe.hset(key, mapping=record)
            pipe.pexpire(key, window)

        self._writes.add(write)
        self._start_refresher()
        return pid

    def end_session(self, sid: str) -> None:
        """The socket disconnected: its record is stamped and kept one window."""
        self.handoffs.pop(sid, None)
        pid = self.pids.pop(sid, None)
        if pid is None:
            return
        key, window, now = self.session_key(pid), self.window_ms, str(int(time.time() * 1000))

        def write(pipe: Any) -> None:
            pipe.hset(key, "gone", now)
            pipe.pexpire(key, window)

        self._writes.add(write)

    def save_data(self, sid: str, data: dict[str, Any]) -> None:
        """The application saved the socket's session: keep it with the record, so a
        recovery restores it (pipelined, as every session write)."""
        pid = self.pids.get(sid)
        encoded = self._encode_data(sid, data) if pid is not None else None
        if pid is None or encoded is None:
            return
        key = self.session_key(pid)
        self._writes.add(lambda pipe: pipe.hset(key, DATA_FIELD, encoded))

    def _encode_data(self, sid: str, data: dict[str, Any] | None) -> str | None:
        """`data` as JSON; None (and one log line per burst) if JSON cannot hold it."""
        if not data:
            return None
        try:
            return orjson.dumps(data).decode()
        except TypeError as error:
            if self._data_log.should_log():
                log.warning(
                    "recovery: a session that JSON cannot hold is not kept for recovery",
                    extra={
                        "event": "recovery.session_not_kept",
                        "reason": str(error)[:200],
                        "suppressed": self._data_log.take_suppressed(),
                    },
                )
            return None

    def pid_of(self, sid: str) -> str | None:
        return self.pids.get(sid)

    def occupancy_channel(self, namespace: str, room: str | None) -> str | None:
        if room is None:  # a socket in the namespace: on a Cluster, hear its channel
            return self.keys.namespace_channel(namespace) if self.keys.sharded else None
        return super().occupancy_channel(namespace, room)

    def on_membership(self, sid: str, namespace: str, room: str, joined: bool) -> None:
        # The session record follows the socket's rooms. On a disconnect its pid is
        # gone already (`end_session`): its rooms stay recorded, for its recovery.
        pid = self.pids.get(sid)
        if pid is None:
            return
        key, name = self.session_key(pid), f"{ROOM_FIELD}{room}"
        if joined:
            self._writes.add(lambda pipe: pipe.hset(key, name, "1"))
        else:
            self._writes.add(lambda pipe: pipe.hdel(key, name))

    def _start_refresher(self) -> None:
        if self._refresher is None or self._refresher.done():
            self._refresher = asyncio.get_running_loop().create_task(self._refresh_sessions())

    async def _refresh_sessions(self) -> None:
        """Keep live sessions' records from expiring: a third of the window apart."""
        while True:
            await asyncio.sleep(self.window_ms / 3000)
            keys = [self.session_key(pid) for pid in self.pids.values()]
            for start in range(0, len(keys), REPLAY_BATCH):
                self._writes.add(self._expire_later(keys[start : start + REPLAY_BATCH]))

    def _expire_later(self, keys: list[str]) -> Callable[[Any], object]:
        window = self.window_ms

        def write(pipe: Any) -> None:
            for key in keys:
                pipe.pexpire(key, window)

        return write

    # --- recovering -------------------------------------------------------------------

    async def prepare_recovery(
        self, eio_sid: str, namespace: str, pid: str, offset: object, user: str
    ) -> str:
        """Decide whether this CONNECT recovers `pid` (the caller authenticated
        `user`); on "recovered", the socket's sid is pinned and its hand-off opened."""
        valid = isinstance(offset, str) and stream_id(offset) is not None
        try:
            pipe = self._stream_client().pipeline(transaction=False)
            pipe.hgetall(self.session_key(pid))
            if isinstance(offset, str) and valid:
                pipe.xrange(self.keys.stream(namespace), min=offset, max=offset, count=1)
            record, *found = await asyncio.wait_for(pipe.execute(), PUBLISH_TIMEOUT_SECONDS)
        except (OSError, TimeoutError, aioredis.RedisError) as error:
            log.warning(
                "recovery: session lookup failed",
                extra={"event": "recovery.lookup_failed", "reason": repr(error)[:200]},
            )
            return "error"
        fields = {k.decode(): v.decode() for k, v in record.items()}
        if "sid" not in fields:
            return "unknown_session"
        if fields.get("user") != user or fields.get("ns") != namespace:
            return "auth_mismatch"
        if not valid or not found[0]:
            return "offset_trimmed"  # no longer in the stream, or never was (no event yet)
        sid = fields["sid"]
        if self.eio_sid_from_sid(sid, namespace) is not None or sid in self.handoffs:
            return "in_use"  # the old connection is still open here
        assert isinstance(offset, str)
        rooms = {k[len(ROOM_FIELD) :] for k in fields if k.startswith(ROOM_FIELD)}
        session = Session(
            pid=pid, sid=sid, namespace=namespace, user=user, rooms=rooms, data=data_of(fields)
        )
        handoff = Handoff(eio_sid=eio_sid, namespace=namespace, session=session, offset=offset)
        self._pinned[(eio_sid, namespace)] = handoff
        self.handoffs[sid] = handoff
        return "recovered"

    def recovering(self, eio_sid: str, namespace: str) -> Handoff | None:
        """The recovery under way for this connection's namespace, if any."""
        return self._pinned.get((eio_sid, namespace))

    def abandon(self, handoff: Handoff) -> None:
        self._pinned.pop((handoff.eio_sid, handoff.namespace), None)
        if self.handoffs.get(handoff.session.sid) is handoff:
            del self.handoffs[handoff.session.sid]

    async def pre_connect(self, eio_sid: str, namespace: str) -> str | None:
        handoff = self._pinned.get((eio_sid, namespace))
        if handoff is None:
            return await super().pre_connect(eio_sid, namespace)  # type: ignore[no-any-return]
        # python-socketio's BaseManager.pre_connect, with the session's sid
        # instead of a new one (tests/server/test_upstream_surface.py pins it).
        sid = handoff.session.sid
        try:
            self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)
        except ValueDuplicationError:
            return None
        self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)
        self.pending_connect.setdefault(namespace, []).append(sid)
        return sid

    async def replay(self, handoff: Handoff, send: Callable[[str, Any], Awaitable[None]]) -> int:
        """Send the socket what it missed, then what was held for it; returns the
        number of replayed events. `send(eio_sid, packet)` sends one packet."""
        sid, namespace = handoff.session.sid, handoff.namespace
        replayed = 0
        last = stream_id(handoff.offset)
        stream = self.keys.stream(namespace)
        try:
            await self._subscription_covers(self.get_rooms(sid, namespace), namespace)
            start = f"({handoff.offset}"
            while self.handoffs.get(sid) is handoff:
                entries: list[tuple[bytes, dict[bytes, bytes]]] = await asyncio.wait_for(
                    self._stream_client().xrange(stream, min=start, count=REPLAY_BATCH),  # type: ignore[arg-type]
                    PUBLISH_TIMEOUT_SECONDS,
                )
                rooms = set(self.get_rooms(sid, namespace))
                for entry_id, entry in entries:
                    offset = entry_id.decode()
                    message = self.json.loads(entry[b"m"])
                    last = stream_id(offset)
                    if concerns(message, sid, namespace, rooms):
                        args = [*event_arguments(message), offset]
                        await send(handoff.eio_sid, self._event(namespace, message["event"], args))
                        replayed += 1
                if len(entries) < REPLAY_BATCH:
                    break
                start = f"({entries[-1][0].decode()}"
        except (OSError, TimeoutError, aioredis.RedisError) as error:
            log.warning(
                "recovery: replay cut short by Redis",
                extra={"event": "recovery.replay_failed", "sid": sid, "reason": repr(error)[:200]},
            )
        # What arrived live meanwhile, past the replay, in order; then the normal path.
        while handoff.held:
            position, event, args = handoff.held.pop(0)
            if last is None or position > last:
                await send(handoff.eio_sid, self._event(namespace, event, args))
        self.abandon(handoff)
        return replayed

    def _event(self, namespace: str, event: str, args: list[Any]) -> Any:
        return self.server.packet_class(sio_packet.EVENT, namespace=namespace, data=[event, *args])

    def _stream_client(self) -> RedisClient:
        """The publisher link (a cluster client on a Cluster: see `KeyLayout`)."""
        return self._publisher()

    async def _subscription_covers(self, rooms: Iterable[str], namespace: str) -> None:
        """Wait until this node hears the socket's room channels, so that every
        entry the replay does not read arrives live: the subscriber holds them and
        a PING sent after the SUBSCRIBE came back (Redis answers in order)."""
        wanted = {self.room_channel(namespace, r) for r in rooms if self.routes(r)}
        if self.keys.sharded:
            wanted.add(self.keys.namespace_channel(namespace))
        loop = asyncio.get_running_loop()
        deadline = loop.time() + SUBSCRIBE_WAIT_SECONDS
        while not wanted <= self._active_rooms and loop.time() < deadline:
            self._sync_rooms_soon()
            await asyncio.sleep(0.01)
        pubsub = self.pubsub
        if not isinstance(pubsub, ChannelSubscriber | ShardedSubscriber):  # not subscribed
            return
        token = secrets.token_hex(8).encode()
        pong: asyncio.Future[None] = loop.create_future()
        self._pongs[token] = pong
        try:
            if isinstance(pubsub, ShardedSubscriber):
                # Every channel of the namespace is on one master: one link to confirm.
                await pubsub.ping(token, self.keys.namespace_channel(namespace))
            else:
                await pubsub.ping(token)
            await asyncio.wait_for(pong, max(0.1, deadline - loop.time()))
        except (OSError, TimeoutError, aioredis.RedisError, ShardChannelMoved):
            log.warning(
                "recovery: subscription not confirmed; an event sent meanwhile may be missed",
                extra={"event": "recovery.subscribe_unconfirmed"},
            )
        finally:
            self._pongs.pop(token, None)

    def heard_pong(self, data: object) -> None:
        """The listener's hook: a PING on the subscriber connection came back."""
        if isinstance(data, bytes):
            pong = self._pongs.get(data)
            if pong is not None and not pong.done():
                pong.set_result(None)

    async def close(self, timeout: float = 2.0) -> None:
        if self._refresher is not None:
            self._refresher.cancel()
        await self._writes.drain(timeout)
        await super().close(timeout)


def _runs_by_slot(client: RedisCluster, batch: list[QueuedPublish]) -> list[list[QueuedPublish]]:
    """`batch` cut into runs of consecutive publishes whose channels share a slot."""
    runs: list[list[QueuedPublish]] = []
    last_slot = -1
    for queued in batch:
        slot = client.keyslot(queued.channel)
        if slot != last_slot:
            runs.append([])
            last_slot = slot
        runs[-1].append(queued)
    return runs
