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
"""

from __future__ import annotations

from server.sio.cluster.recovery import EMIT_SCRIPT

CROSSED_INFIX = "#relay#crossed#"

# KEYS[2]: the record; ARGV[5]: the message's near stream id (`ms-seq`). Then recovery's
# EMIT_SCRIPT as it is (KEYS[1], ARGV[1..4]; ARGV[4] is the window in ms). A refused
# message returns nil (the link counts it), a taken one its far stream id.
GUARD = """
local took = redis.call('GET', KEYS[2])
local ms, seq = string.match(ARGV[5], '^(%d+)-(%d+)$')
if took then
  local took_ms, took_seq = string.match(took, '^(%d+)-(%d+)$')
  ms, seq = tonumber(ms), tonumber(seq)
  took_ms, took_seq = tonumber(took_ms), tonumber(took_seq)
  if ms < took_ms or (ms == took_ms and seq <= took_seq) then
    return false
  end
end
redis.call('SET', KEYS[2], ARGV[5], 'PX', ARGV[4])
"""
GUARDED_EMIT_SCRIPT = GUARD + EMIT_SCRIPT


def crossed_key(stream_key: str, origin: str) -> str:
    """The far record of what crossed from `origin` into `stream_key` (the stream's own
    name first: on a Redis Cluster it keeps the stream's hash tag, so one slot)."""
    return f"{stream_key}{CROSSED_INFIX}{origin}"
