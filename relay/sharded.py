"""The relay on a Redis Cluster: what differs from one Redis, in one place.

On a Cluster the servers use sharded pub/sub (`server.net.redis_topology`): a
pattern subscription hears none of it, `PUBSUB CHANNELS` sees no shard channel,
and a publish must go to the master owning the channel's slot. So:

- Interest (`shard_interest`): `PUBSUB SHARDCHANNELS <channel>#room#*` on every
  master, less the relay's own subscriptions: a channel the relay holds counts
  only if `PUBSUB SHARDNUMSUB` there says someone else holds it too. Without that
  two clustered regions would keep each other's interest alive forever (each
  relay subscribes what the other wants, and would then announce it back).
- Hearing (`relay.relay.Relay._listen_sharded`): `SSUBSCRIBE`, per master, by slot
  (the servers' `ShardedSubscriber`), to exactly the room channels some far region
  wants, plus the shared channel, the query channel and, with recovery on, the
  namespace channels (a namespace's emits and sid emits travel there).
- Publishing into a far Cluster (`ClusterSender`): SPUBLISH, or the recovery
  script as `SHARDED_EMIT_SCRIPT` behind the guard (`relay.guard`) with its stream
  and its record of what crossed in the channel's slot, each
  master's part of a batch pipelined on its own connection (in order), the
  masters at once. Batches go one after the other: everything a relay forwards
  reaches a far master in the order the relay heard it. Across masters a far server
  hears them on one connection per master, so no order holds between channels
  of different slots there: the promise the servers give each other on a
  Cluster (one channel, and with recovery one namespace, is one slot: in order).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import time
from collections.abc import Iterable
from typing import Any

from redis import asyncio as aioredis
from redis import exceptions
from redis.asyncio.cluster import ClusterNode, RedisCluster

from relay.guard import GUARDED_SHARDED_EMIT_SCRIPT
from relay.link import (
    BACKOFF_CAP,
    BACKOFF_START,
    FAR_RESTART_GRACE_SECONDS,
    IDLE_PING_SECONDS,
    LINK_TIMEOUT_SECONDS,
    SEND_WINDOW,
    PeerLink,
)
from relay.wire import Forward

log = logging.getLogger("iofleet.relay.sharded")

# Answers about the Cluster's state, not the message: the batch is sent again once it
# answers (a master down, a failover or a resharding under way, a restarted master
# loading its data or without the script).
TRANSIENT = (
    aioredis.ConnectionError,
    aioredis.TimeoutError,
    exceptions.ClusterError,
    exceptions.AskError,
    exceptions.TryAgainError,
    exceptions.BusyLoadingError,
    exceptions.MasterDownError,
    exceptions.NoScriptError,
)


async def shard_interest(
    client: RedisCluster, pattern: str, own: Iterable[bytes], timeout: float
) -> set[bytes]:
    """The shard channels matching `pattern` some subscriber other than this relay
    holds (`own`: what the relay itself subscribes), read on every master."""
    own = set(own)
    found: set[bytes] = set()
    for node in client.get_primaries():
        channels = await asyncio.wait_for(
            client.pubsub_shardchannels(pattern, target_nodes=node), timeout
        )
        names = {bytes(channel) for channel in channels}  # type: ignore[arg-type]
        mine = sorted(names & own)
        if mine:
            counts = await asyncio.wait_for(
                client.pubsub_shardnumsub(*mine, target_nodes=node), timeout
            )
            names -= {bytes(name) for name, count in counts if int(count) <= 1}  # type: ignore[arg-type]
        found |= names
    return found


class ClusterSender:
    """A link's outbox into a far Redis Cluster, in order, a batch at a time: each
    master's part of the batch pipelined on that master's own connection, the masters
    at once. What one master did not take stays at the outbox's head, in order, and is
    sent again; what the others took is not (no duplicate while one master is away)."""

    def __init__(self, link: PeerLink) -> None:
        self.link = link
        self._masters: dict[str, aioredis.Redis] = {}  # node name -> a client on it

    def _client(self) -> RedisCluster:
        client = self.link.endpoint.client(
            f"iofleet-relay-{self.link.near}-to-{self.link.name}",
            socket_connect_timeout=LINK_TIMEOUT_SECONDS,
            socket_timeout=LINK_TIMEOUT_SECONDS,
            driver_info=None,
        )
        assert isinstance(client, RedisCluster)
        return client

    def _master(self, node: ClusterNode) -> aioredis.Redis:
        """A plain client on `node`, with the endpoint's TLS and credentials."""
        client = self._masters.get(node.name)
        if client is None:
            options = {
                "client_name": f"iofleet-relay-{self.link.near}-to-{self.link.name}",
                "socket_connect_timeout": LINK_TIMEOUT_SECONDS,
                "socket_timeout": LINK_TIMEOUT_SECONDS,
                "driver_info": None,
            }
            client = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                ssl=self.link.endpoint.tls,
                **self.link.endpoint.node_options(options),
            )
            self._masters[node.name] = client
        return client

    async def run(self) -> None:
        """Connect (the slot map, the script on every master), send; after a failure a
        fresh slot map and fresh connections send what was not taken again."""
        link = self.link
        backoff = BACKOFF_START
        failed = False
        while True:
            client = self._client()
            try:
                await asyncio.wait_for(client.initialize(), LINK_TIMEOUT_SECONDS * 2)
                sha = await asyncio.wait_for(
                    client.script_load(GUARDED_SHARDED_EMIT_SCRIPT), LINK_TIMEOUT_SECONDS
                )
                if failed:
                    # A master may have restarted: its servers resubscribe within their
                    # listener backoff, and pub/sub keeps nothing for them meanwhile.
                    await asyncio.sleep(FAR_RESTART_GRACE_SECONDS)
                    failed = False
                link._set(publishing=True)
                backoff = BACKOFF_START
                await self._pump(client, str(sha))
            except (OSError, TimeoutError, aioredis.RedisError) as error:
                failed = True
                link._set(publishing=False)
                link._warn("relay: publishing to the far Redis Cluster failed; holding", error)
            finally:
                closing = [client.aclose(), *(m.aclose() for m in self._masters.values())]
                self._masters.clear()
                with contextlib.suppress(OSError, TimeoutError, aioredis.RedisError):
                    await asyncio.wait_for(asyncio.gather(*closing), 1.0)
            link._back.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(link._back.wait(), backoff)
            backoff = min(backoff * 2, BACKOFF_CAP)

    async def _pump(self, client: RedisCluster, sha: str) -> None:
        link = self.link
        while True:
            if not link.outbox or link.holding:  # a catch-up is due: nothing more leaves
                link._wake.clear()
                try:
                    await asyncio.wait_for(link._wake.wait(), IDLE_PING_SECONDS)
                except TimeoutError:  # idle: a dead path shows before traffic does
                    await asyncio.wait_for(
                        client.ping(target_nodes=RedisCluster.PRIMARIES), LINK_TIMEOUT_SECONDS
                    )
                continue
            link._expire()
            batch = list(itertools.islice(link.outbox, 0, SEND_WINDOW))
            if not batch:
                continue
            # On the wire: a catch-up's `resume` puts its messages behind these.
            link._in_flight = len(batch)
            try:
                await self._send(client, sha, batch)
            finally:
                link._in_flight = 0

    async def _send(self, client: RedisCluster, sha: str, batch: list[Forward]) -> None:
        """Send `batch` (the outbox's head), each message to its channel's master; take
        off the outbox what was taken; raise the first failure."""
        link = self.link
        by_master: dict[str, tuple[ClusterNode, list[int]]] = {}
        for index, forward in enumerate(batch):
            node = client.get_node_from_key(forward.channel)
            if node is None:
                raise exceptions.SlotNotCoveredError(f"no master serves {forward.channel!r}")
            by_master.setdefault(node.name, (node, []))[1].append(index)
        parts = list(by_master.values())
        answers = await asyncio.wait_for(
            asyncio.gather(
                *(self._send_to(node, sha, [batch[i] for i in part]) for node, part in parts),
                return_exceptions=True,
            ),
            LINK_TIMEOUT_SECONDS * 2,
        )
        failure: BaseException | None = None
        again: list[int] = []  # not taken: sent again, in order
        refused = 0  # the guard: it crossed already (`relay.guard`)
        for (_, part), answer in zip(parts, answers, strict=True):
            if isinstance(answer, BaseException):
                failure = failure or answer
                again += part
                continue
            for index, result in zip(part, answer, strict=True):
                if isinstance(result, TRANSIENT):  # the Cluster, not the message
                    failure = failure or result
                    again.append(index)
                elif isinstance(result, aioredis.ResponseError):  # this one message
                    link.metrics.bad_message(f"refused by {link.name}'s Redis: {result}"[:200])
                elif result is None and batch[index].offset is not None:
                    refused += 1
        link._in_flight = 0
        for _ in batch:
            link.outbox.popleft()
        link.outbox.extendleft(batch[i] for i in sorted(again, reverse=True))
        taken = len(batch) - len(again)
        if taken:
            taken_bytes = sum(len(f.message) for f in batch) - sum(
                len(batch[i].message) for i in again
            )
            link.metrics.link_bytes.labels(link=link.name).inc(taken_bytes)
            link.last_delivery = time.monotonic()
            link.metrics.forwarded.labels(link=link.name).inc(taken - refused)
        if refused:
            link.metrics.refused.labels(link=link.name).inc(refused)
        if failure is not None:
            raise failure
        link._set(publishing=True)

    async def _send_to(self, node: ClusterNode, sha: str, forwards: list[Forward]) -> list[Any]:
        """One master's part, pipelined in order; each command's reply or error."""
        settings = self.link.settings
        window_ms = int(settings.recovery_window_seconds * 1000)
        pipe = self._master(node).pipeline(transaction=False)
        for forward in forwards:
            if forward.offset is not None and settings.recovery:
                stream = self.link.layout.stream_of(forward.channel)
                record = self.link.record_of(forward)
                pipe.evalsha(
                    sha, 3, stream, forward.channel, record, forward.channel, forward.message,
                    settings.recovery_max_messages, window_ms, forward.offset,
                )  # fmt: skip
            else:
                pipe.spublish(forward.channel, forward.message)
        return list(await pipe.execute(raise_on_error=False))
