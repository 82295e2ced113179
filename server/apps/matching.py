"""Random matching and a WebRTC signaling relay (the seeds' matching chat).

`user:match` puts the caller in one waiting queue shared by every node (a Redis
list when REDIS_URL is set, so users on different nodes meet); the next caller
is paired with the oldest waiting user, both join a private room and get
`user:matched` `{room, peer}`. `user:match:cancel` leaves the queue.
`webrtc:offer`, `webrtc:answer`, `webrtc:ice` go to the matched peer only, as
`{from, data}`. When either side leaves, the other gets `user:match:ended`.
"""

from __future__ import annotations

import collections
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any, Protocol

import orjson
import socketio
from redis import asyncio as aioredis
from redis.asyncio.cluster import RedisCluster

from server.apps.payloads import fail
from server.node.services import services_of

log = logging.getLogger("iofleet.matching")

QUEUE_KEY = "iofleet:match:queue"
PEER_KEY = "iofleet:match:peer:{sid}"
# A waiting entry older than this belongs to a node that died: skip it.
STALE_AFTER_SECONDS = 600
PEER_TTL_SECONDS = 86400
SIGNALS = ("webrtc:offer", "webrtc:answer", "webrtc:ice")

# Pop waiting entries until one from another user (or nothing) turns up; put
# back what was skipped; queue the caller when nobody fits. Atomic in Redis.
PAIR_SCRIPT = """
local skipped, found, queued = {}, false, false
while true do
  local raw = redis.call('LPOP', KEYS[1])
  if not raw then break end
  local entry = cjson.decode(raw)
  if tonumber(entry.ts) < tonumber(ARGV[4]) then
    -- stale: drop it
  elseif entry.user ~= ARGV[2] then
    found = raw
    break
  else
    if entry.sid == ARGV[3] then queued = true end
    table.insert(skipped, raw)
  end
end
for i = #skipped, 1, -1 do redis.call('LPUSH', KEYS[1], skipped[i]) end
if found then return found end
if not queued then redis.call('RPUSH', KEYS[1], ARGV[1]) end
return false
"""


@dataclass(frozen=True)
class Waiting:
    sid: str
    user: str
    ts: float

    def encode(self) -> str:
        return orjson.dumps(asdict(self)).decode()


@dataclass(frozen=True)
class Pairing:
    peer_sid: str
    peer_user: str
    room: str


class MatchStore(Protocol):
    async def pair_or_wait(self, me: Waiting) -> Waiting | None: ...
    async def cancel(self, me: Waiting) -> None: ...
    async def set_pairing(self, sid: str, pairing: Pairing) -> None: ...
    async def pairing(self, sid: str) -> Pairing | None: ...
    async def clear_pairing(self, sid: str) -> Pairing | None: ...


class MemoryStore:
    """One node, no Redis."""

    def __init__(self) -> None:
        self.queue: collections.deque[Waiting] = collections.deque()
        self.pairings: dict[str, Pairing] = {}

    async def pair_or_wait(self, me: Waiting) -> Waiting | None:
        for other in list(self.queue):
            if other.user != me.user:
                self.queue.remove(other)
                return other
        if all(w.sid != me.sid for w in self.queue):
            self.queue.append(me)
        return None

    async def cancel(self, me: Waiting) -> None:
        self.queue = collections.deque(w for w in self.queue if w.sid != me.sid)

    async def set_pairing(self, sid: str, pairing: Pairing) -> None:
        self.pairings[sid] = pairing

    async def pairing(self, sid: str) -> Pairing | None:
        return self.pairings.get(sid)

    async def clear_pairing(self, sid: str) -> Pairing | None:
        return self.pairings.pop(sid, None)


class RedisStore:
    """Shared by every node: the queue is a list, pairings are keys with a TTL."""

    def __init__(self, redis: aioredis.Redis | RedisCluster) -> None:
        self.redis = redis
        self._pair = redis.register_script(PAIR_SCRIPT)

    async def pair_or_wait(self, me: Waiting) -> Waiting | None:
        stale_before = time.time() - STALE_AFTER_SECONDS
        found = await self._pair(
            keys=[QUEUE_KEY], args=[me.encode(), me.user, me.sid, stale_before]
        )
        return Waiting(**orjson.loads(found)) if found else None

    async def cancel(self, me: Waiting) -> None:
        for raw in await self.redis.lrange(QUEUE_KEY, 0, -1):
            if orjson.loads(raw).get("sid") == me.sid:
                await self.redis.lrem(QUEUE_KEY, 0, str(raw))

    async def set_pairing(self, sid: str, pairing: Pairing) -> None:
        value = orjson.dumps(asdict(pairing)).decode()
        await self.redis.set(PEER_KEY.format(sid=sid), value, ex=PEER_TTL_SECONDS)

    async def pairing(self, sid: str) -> Pairing | None:
        raw = await self.redis.get(PEER_KEY.format(sid=sid))
        return Pairing(**orjson.loads(raw)) if raw else None

    async def clear_pairing(self, sid: str) -> Pairing | None:
        raw = await self.redis.getdel(PEER_KEY.format(sid=sid))
        return Pairing(**orjson.loads(raw)) if raw else None


class Matcher:
    def __init__(self, sio: socketio.AsyncServer) -> None:
        self.sio = sio
        self.services = services_of(sio)
        self._memory = MemoryStore()
        self._redis_store: RedisStore | None = None
        # Sids on this node that called user:match. Both sides of a pairing did so on
        # their own node, so a disconnect of anyone else has nothing to clean up and
        # must not cost a Redis round trip.
        self._involved: set[str] = set()

    @property
    def store(self) -> MatchStore:
        # The node's Redis client exists from the node's start, after registration.
        redis = self.services.redis
        if redis is None:
            return self._memory
        if self._redis_store is None or self._redis_store.redis is not redis:
            self._redis_store = RedisStore(redis)
        return self._redis_store

    def register(self) -> None:
        self.sio.on("user:match", self.match)
        self.sio.on("user:match:cancel", self.cancel)
        for signal in SIGNALS:
            self.sio.on(signal, self._relay(signal))

    async def _me(self, sid: str) -> Waiting:
        session = await self.sio.get_session(sid)
        return Waiting(sid=sid, user=str(session.get("user", "anonymous")), ts=time.time())

    async def match(self, sid: str, data: Any = None) -> dict[str, Any]:
        me = await self._me(sid)
        self._involved.add(sid)
        try:
            if await self.store.pairing(sid) is not None:
                return fail("already matched; cancel first")
            other = await self.store.pair_or_wait(me)
            if other is None:
                return {"ok": True, "status": "waiting"}
            room = f"match:{secrets.token_urlsafe(9)}"
            await self.store.set_pairing(me.sid, Pairing(other.sid, other.user, room))
            await self.store.set_pairing(other.sid, Pairing(me.sid, me.user, room))
        except (OSError, aioredis.RedisError) as error:
            store_failed("user:match", sid, error)
            return fail("matching unavailable")
        # enter_room on a sid of another node goes through the fan-out.
        await self.sio.enter_room(me.sid, room)
        await self.sio.enter_room(other.sid, room)
        await self.sio.emit("user:matched", {"room": room, "peer": other.user}, to=me.sid)
        await self.sio.emit("user:matched", {"room": room, "peer": me.user}, to=other.sid)
        return {"ok": True, "status": "matched", "room": room, "peer": other.user}

    async def cancel(self, sid: str, data: Any = None) -> dict[str, Any]:
        try:
            await self.store.cancel(await self._me(sid))
            await self._end(sid, reason="cancelled")
        except (OSError, aioredis.RedisError) as error:
            store_failed("user:match:cancel", sid, error)
            return fail("matching unavailable")
        return {"ok": True}

    async def _end(self, sid: str, reason: str) -> None:
        pairing = await self.store.clear_pairing(sid)
        if pairing is None:
            return
        await self.store.clear_pairing(pairing.peer_sid)
        await self.sio.emit(
            "user:match:ended", {"room": pairing.room, "reason": reason}, to=pairing.peer_sid
        )
        await self.sio.leave_room(pairing.peer_sid, pairing.room)

    def _relay(self, signal: str) -> Any:
        async def relay(sid: str, data: Any = None) -> dict[str, Any]:
            try:
                pairing = await self.store.pairing(sid)
            except (OSError, aioredis.RedisError) as error:
                store_failed(signal, sid, error)
                return fail("matching unavailable")
            if pairing is None:
                return fail("not matched")
            me = await self._me(sid)
            await self.sio.emit(signal, {"from": me.user, "data": data}, to=pairing.peer_sid)
            return {"ok": True}

        return relay

    async def on_disconnect(self, sid: str) -> None:
        if sid not in self._involved:
            return
        self._involved.discard(sid)
        try:
            await self.store.cancel(await self._me(sid))
            await self._end(sid, reason="peer left")
        except (OSError, aioredis.RedisError, KeyError) as error:
            # Redis gone (or the session already dropped): the queue entry goes stale
            # and is skipped later, the peer's pairing key expires with its TTL.
            store_failed("disconnect cleanup", sid, error)


def store_failed(operation: str, sid: str, error: BaseException) -> None:
    """One log line per failed store operation, naming it and the error."""
    log.error(
        "matching store failed",
        extra={
            "event": "match.error",
            "operation": operation,
            "sid": sid,
            "error": f"{type(error).__name__}: {error}",
        },
    )


def register(sio: socketio.AsyncServer) -> Matcher:
    matcher = Matcher(sio)
    matcher.register()
    return matcher
