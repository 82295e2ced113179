"""What crossed a link, recorded where it landed: the far Redis.

The link writes a streamed message into the far region with recovery's own
`EMIT_SCRIPT` (`server.sio.cluster.recovery`) behind a guard, in one script: the far
Redis keeps, per far stream and origin region, the newest near stream id it took
(`crossed_key`), and refuses a message whose near id is not above it. So:

- the record of what crossed is written with the stream entry itself, atomically: it
  cannot drift from what the far region has (`relay.catchup` reads it as the
  watermark of a catch-up);
- a message sent twice (a batch resent after a link failure, two replicas both
  forwarding for a moment around a hand-over, a catch-up overlapping live traffic)
  lands once, and none lands behind a newer one: the far stream keeps the near
  stream's order.

The record expires one recovery window after the last write: older than that, the near
stream has nothing left to catch up either.

On a Redis Cluster (either side) the streams are one per namespace (recovery's
`KeyLayout`). The record's name starts with its far stream's, so it keeps that stream's
hash tag and the guarded script (stream, channel and record as declared keys) stays in
one slot. A near stream's ids are its own sequence: where several near streams land in
one far stream (a clustered region into a single Redis) each has its own record there.
"""

from __future__ import annotations

from server.sio.cluster.recovery import EMIT_SCRIPT, SHARDED_EMIT_SCRIPT, hash_tag

CROSSED_INFIX = "#relay#crossed#"

# KEYS[n]: the record; ARGV[5]: the message's near stream id (`ms-seq`). Then recovery's
# emit script as it is (KEYS[1], ARGV[1..4]; ARGV[4] is the window in ms). A refused
# message returns nil (the link counts it), a taken one its far stream id.
GUARD = """
local took = redis.call('GET', KEYS[@RECORD@])
local ms, seq = string.match(ARGV[5], '^(%d+)-(%d+)$')
if took then
  local took_ms, took_seq = string.match(took, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  took_ms, took_seq = tonumber(took_ms), tonumber(took_seq)
  if ms < took_ms or (ms == took_ms and seq <= took_seq) then
    return false
  end
end
redis.call('SET', KEYS[@RECORD@], ARGV[5], 'PX', ARGV[4])
"""
# One Redis: KEYS = stream, record. A Cluster: KEYS = stream, channel, record (one slot).
GUARDED_EMIT_SCRIPT = GUARD.replace("@RECORD@", "2") + EMIT_SCRIPT
GUARDED_SHARDED_EMIT_SCRIPT = GUARD.replace("@RECORD@", "3") + SHARDED_EMIT_SCRIPT


def crossed_key(stream_key: str, origin: str, near_stream: str | None = None) -> str:
    """The far record of what crossed from `origin` into `stream_key` (the stream's own
    name first: on a Redis Cluster it keeps the stream's hash tag, so one slot).
    `near_stream`: the origin's stream it came through, when several of the origin's
    streams land in this one (each its own ids): named by that stream's hash tag."""
    key = f"{stream_key}{CROSSED_INFIX}{origin}"
    return key if near_stream is None else f"{key}#{hash_tag(near_stream)}"
