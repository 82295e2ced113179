"""The far guard (`relay.guard`) on a real Redis: a near stream id is taken once and
never below the newest taken, and what it takes goes through recovery's own emit
script (stream entry and publish), as a far server's emit does."""

from __future__ import annotations

from collections.abc import AsyncIterator

import orjson
import pytest
from redis import asyncio as aioredis

from relay.guard import GUARDED_EMIT_SCRIPT, crossed_key
from tests.support.procs import RedisServer

STREAM = "iofleet#stream"
CHANNEL = "iofleet#room#/#support-42"
WINDOW_MS = 120_000


@pytest.fixture
async def far() -> AsyncIterator[aioredis.Redis]:
    server = RedisServer().start()
    client = aioredis.Redis.from_url(server.url)
    try:
        yield client
    finally:
        await client.aclose()
        server.stop()


async def test_each_near_id_lands_once_and_never_behind_a_newer_one(
    far: aioredis.Redis,
) -> None:
    record = crossed_key(STREAM, "r1")

    async def send(near_id: str, text: str) -> object:
        message = f'{{"method":"emit","text":"{text}","iofleet_origin":"r1"}}'
        return await far.eval(
            GUARDED_EMIT_SCRIPT, 2, STREAM, record, CHANNEL, message, 1000, WINDOW_MS, near_id
        )

    taken = [await send(near_id, text) for near_id, text in
             [("100-0", "a"), ("100-1", "b"), ("100-1", "b again"), ("99-5", "late"),
              ("101-0", "c"), ("100-9", "behind c")]]  # fmt: skip
    assert [reply is not None for reply in taken] == [True, True, False, False, True, False]
    texts = [orjson.loads(fields[b"m"])["text"] for _, fields in await far.xrange(STREAM)]
    assert texts == ["a", "b", "c"]
    assert await far.get(record) == b"101-0"
    assert 0 < await far.pttl(record) <= WINDOW_MS  # gone one window after the last write
    # Another origin has its own record.
    other = crossed_key(STREAM, "r3")
    assert await far.eval(
        GUARDED_EMIT_SCRIPT, 2, STREAM, other, CHANNEL, '{"x":1}', 1000, WINDOW_MS, "5-0"
    )
