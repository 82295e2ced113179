"""The region's links to far regions as its servers show them in `/admin/status`.

The inter-region relay (`python -m relay`, its own process: the server never imports
it) that forwards for this region writes its links' state to one key in the
region's Redis, `<IOFLEET_REDIS_CHANNEL>#relay#status` (JSON: the region, the
unix time it was written, and per link its name, state, held messages and lag),
every third of its lease and with a TTL of a few leases (`relay.relay`). A server
reads the key when asked for its status, bounded in time: a key absent (no relay,
or none active for a few leases), unreadable, or a Redis that does not answer in
time shows `"state": "unknown"`. Readiness never reads it: a far region's trouble
is not a reason to take a node out of its balancer.
"""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
from redis import asyncio as aioredis

from server.net.redis_topology import RedisClient

RELAY_STATUS_SUFFIX = "#relay#status"
# `/admin/status` waits this long at most for the key (a probe's timeout is ~1 s).
READ_TIMEOUT_SECONDS = 0.5
# Of each link, what a server shows (the relay writes these, and more).
LINK_FIELDS = ("link", "region", "state", "state_s", "held", "lag_s")


def relay_status_key(channel: str) -> str:
    """The key the active relay of the region writes its links' status to."""
    return f"{channel}{RELAY_STATUS_SUFFIX}"


def unknown(reason: str) -> dict[str, Any]:
    return {"state": "unknown", "reason": reason}


async def read_links(client: RedisClient | None, channel: str) -> dict[str, Any]:
    """What the region's relay last wrote, as `/admin/status` shows it."""
    if client is None:
        return unknown("no redis")
    try:
        raw = await asyncio.wait_for(client.get(relay_status_key(channel)), READ_TIMEOUT_SECONDS)
    except (OSError, TimeoutError, aioredis.RedisError) as error:
        return unknown(f"redis: {type(error).__name__}")
    if raw is None:
        return unknown("no relay status (no relay active in this region)")
    return parse(raw, time.time())


def parse(raw: bytes | str, now: float) -> dict[str, Any]:
    """The relay's JSON as a server shows it; `unknown` if it is not that."""
    try:
        written = orjson.loads(raw)
        links = [{name: link[name] for name in LINK_FIELDS} for link in written["links"]]
        region, written_at = str(written["region"]), float(written["written_at"])
    except (orjson.JSONDecodeError, KeyError, TypeError, ValueError):
        return unknown("relay status unreadable")
    return {
        "state": "known",
        "region": region,
        "age_s": round(max(now - written_at, 0.0), 3),
        "links": links,
    }
