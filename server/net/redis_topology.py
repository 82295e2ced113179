"""`IOFLEET_REDIS_URL` turned into Redis clients, for one Redis, Sentinel or a Cluster.

The one place that knows Redis topologies. The URL names one:

- ``redis://[user:password@]host:port/db``, ``rediss://...`` (TLS), ``unix://path``:
  one Redis (ElastiCache with cluster mode disabled: ``rediss://:<auth token>@<primary>``);
- ``redis+sentinel://[user:password@]host:port[,host:port...]/<db>/<service>``: the
  master Sentinel names `<service>`, found through the listed sentinels and found
  again after a failover (python-socketio's own format for `AsyncRedisManager`;
  ``rediss+sentinel`` speaks TLS to the sentinels and the master alike);
- ``redis+cluster://[user:password@]host:port[,host:port...]`` (``rediss+cluster`` for
  TLS, ElastiCache with cluster mode enabled): a Redis Cluster, any of its nodes as
  seeds; its fan-out runs on sharded pub/sub (Redis 7 ``SSUBSCRIBE``/``SPUBLISH``).

The password and user are those of the data nodes (the Redis AUTH token); query
arguments are redis-py's (``ssl_ca_certs``, ``ssl_cert_reqs``, ``socket_timeout``...).

Pub/sub differs by topology and the fan-out (`server.sio.cluster.fanout`) sees one surface:
`RedisEndpoint.subscriber()` answers a `Subscriber` (subscribe, unsubscribe, listen,
aclose) and `RedisEndpoint.publish` a PUBLISH or an SPUBLISH. On a Cluster a plain
PUBLISH goes to every node of the cluster over its bus; SPUBLISH goes only to the
shard owning the channel's slot, so a node subscribed to no channel of a room's
shard hears none of its bytes (`ShardedSubscriber`).
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Protocol
from urllib.parse import urlsplit, urlunsplit

from redis import asyncio as aioredis
from redis.asyncio.client import PubSub
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import parse_url
from redis.asyncio.sentinel import Sentinel, SentinelManagedSSLConnection

Topology = Literal["single", "sentinel", "cluster"]
RedisClient = aioredis.Redis | RedisCluster
"""What `RedisEndpoint.client` answers: a cluster client on a cluster, else a plain one."""

SCHEMES: Mapping[str, tuple[Topology, bool]] = {
    "redis": ("single", False),
    "rediss": ("single", True),
    "unix": ("single", False),
    "redis+sentinel": ("sentinel", False),
    "rediss+sentinel": ("sentinel", True),
    "redis+cluster": ("cluster", False),
    "rediss+cluster": ("cluster", True),
}
SENTINEL_FORM = "redis+sentinel://[user:password@]host:port[,host:port]/<db>/<service name>"
CLUSTER_FORM = "redis+cluster://[user:password@]host:port[,host:port]"
# Messages a sharded subscriber holds for the listener before its readers stop reading
# their sockets (Redis's output-buffer limit then applies, as with one Redis).
SHARDED_QUEUE_MESSAGES = 1024
# Every link of a sharded subscriber is PINGed this often; one that leaves
# LINK_DEAF_AFTER_PINGS pings in a row unanswered is deaf (the fan-out's own heartbeat
# travels on one link only: the one to the master owning its channel's slot).
LINK_PING_SECONDS = 1.0
LINK_DEAF_AFTER_PINGS = 3


class RedisUrlError(ValueError):
    """`IOFLEET_REDIS_URL` is malformed; the message is one line and shows no password."""


def redacted(url: str) -> str:
    """`url` with its password replaced by `***` (for errors and logs)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    user = parts.username or ""
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))


def _shown(url: str) -> str:
    try:
        return redacted(url)
    except ValueError:  # not even a URL urllib can split: show none of it
        return "<the URL>"


@dataclass(frozen=True)
class RedisEndpoint:
    """A parsed `IOFLEET_REDIS_URL` (`parse_redis_url`): where Redis is and how to talk to it."""

    url: str
    topology: Topology
    tls: bool
    addresses: tuple[tuple[str, int], ...] = ()
    """Sentinels or cluster seeds; empty for one Redis (its client is made from `url`)."""
    service: str | None = None
    """The Sentinel service name of the master."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Connection options from the URL (user, password, db, TLS and query arguments)."""

    def __str__(self) -> str:
        return redacted(self.url)

    def client(self, name: str, **options: Any) -> RedisClient:
        """A client on the data nodes; `name` is its `CLIENT SETNAME` (shows in CLIENT LIST).
        `options` are redis-py's; what the URL says wins over them, as in `from_url`."""
        options = {"client_name": name, **options}
        if self.topology == "single":
            return aioredis.Redis.from_url(self.url, **options)
        if self.topology == "sentinel":
            master: aioredis.Redis = self._sentinel({**options, **self.options}).master_for(
                str(self.service), **self._master_options()
            )
            return master
        nodes = [ClusterNode(host, port) for host, port in self.addresses]
        return RedisCluster(startup_nodes=nodes, ssl=self.tls, **self.node_options(options))

    def _sentinel(self, options: Mapping[str, Any]) -> Sentinel:
        # The sentinels get the socket options (timeouts) and TLS, never the data
        # nodes' password: sentinels usually run without auth.
        sentinel_options = {k: v for k, v in options.items() if k.startswith("socket_")}
        if self.tls:
            sentinel_options.update(
                {k: v for k, v in options.items() if k.startswith("ssl_")}, ssl=True
            )
        return Sentinel(  # type: ignore[no-untyped-call,unused-ignore]
            list(self.addresses), sentinel_kwargs=sentinel_options, **options
        )

    def _master_options(self) -> dict[str, Any]:
        if self.tls:
            return {"connection_class": SentinelManagedSSLConnection}
        return {}

    def node_options(self, options: Mapping[str, Any]) -> dict[str, Any]:
        """`options` and the URL's (which win) for a cluster node: no database there."""
        return {k: v for k, v in {**options, **self.options}.items() if k != "db"}

    def subscriber(self, name: str, **options: Any) -> Subscriber:
        """A fresh pub/sub link (its own connections, a fresh view of the topology)."""
        if self.topology == "cluster":
            return ShardedSubscriber(self, name, options)
        client = self.client(name, **options)
        assert isinstance(client, aioredis.Redis)
        return ChannelSubscriber(client)

    async def publish(self, client: RedisClient, channel: str, message: str | bytes) -> int:
        """Publish `message`; the number of subscribers Redis handed it to."""
        if self.topology == "cluster":
            return int(await client.spublish(channel, message))
        return int(await client.publish(channel, message))

    async def publish_many(
        self, client: RedisClient, items: Sequence[tuple[str, str | bytes]]
    ) -> list[int]:
        """Publish each `(channel, message)` in order; the subscriber count of each.

        One pipeline on one Redis; on a cluster one SPUBLISH after the other (each
        goes to its channel's master, and awaiting each keeps the order).
        """
        if isinstance(client, RedisCluster):
            return [int(await client.spublish(channel, message)) for channel, message in items]
        pipe = client.pipeline(transaction=False)
        for channel, message in items:
            pipe.publish(channel, message)
        return [int(count) for count in await pipe.execute()]


def parse_redis_url(url: str) -> RedisEndpoint:
    """Validate `url` (see the module docstring); RedisUrlError, one line, if it is wrong."""
    shown = _shown(url)
    scheme = url.partition("://")[0].lower() if "://" in url else ""
    if scheme not in SCHEMES:
        raise RedisUrlError(
            f"{shown!r}: scheme must be redis://, rediss://, unix://, "
            "redis+sentinel:// or redis+cluster:// (rediss+... for TLS)"
        )
    topology, tls = SCHEMES[scheme]
    try:
        if topology == "single":
            options = _connection_options(url)  # what redis-py's from_url will take
            db = urlsplit(url).path.strip("/")
            if scheme != "unix" and db and not db.isdigit():  # redis-py would ignore it
                raise ValueError(f"the database must be a number (got {db!r})")
            return RedisEndpoint(url=url, topology="single", tls=tls, options=options)
        return _parse_multi_host(url, topology, tls)
    except RedisUrlError:
        raise
    except (ValueError, TypeError) as error:
        raise RedisUrlError(f"{shown!r}: {error}") from None


def _parse_multi_host(url: str, topology: Topology, tls: bool) -> RedisEndpoint:
    parts = urlsplit(url)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    addresses = tuple(_address(item) for item in hosts.split(","))
    path = [segment for segment in parts.path.split("/") if segment]
    service = None
    if topology == "sentinel":
        if len(path) != 2 or not path[0].isdigit():
            raise ValueError(f"needs /<db>/<service name>, as in {SENTINEL_FORM}")
        db, service = path
    else:
        if path not in ([], ["0"]):
            raise ValueError(f"a Redis Cluster has database 0 only, as in {CLUSTER_FORM}")
        db = "0"
    # The user, password, db and query arguments through redis-py's own parser, so
    # they mean what they mean in a redis:// URL.
    first_host, first_port = addresses[0]
    base = "rediss" if tls else "redis"
    auth = f"{userinfo}@" if userinfo else ""
    single = f"{base}://{auth}{first_host}:{first_port}/{db}"
    if parts.query:
        single += f"?{parts.query}"
    options = _connection_options(single)
    return RedisEndpoint(
        url=url, topology=topology, tls=tls, addresses=addresses, service=service, options=options
    )


def _connection_options(url: str) -> dict[str, Any]:
    """redis-py's reading of `url`, less where to connect (and how: TLS is `tls`)."""
    where = {"host", "port", "path", "connection_class"}
    return {k: v for k, v in parse_url(url).items() if k not in where}


def _address(item: str) -> tuple[str, int]:
    host, colon, port = item.strip().rpartition(":")
    if not colon or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ValueError(f"{item.strip()!r} is not host:port")
    return host.strip("[]"), int(port)


class Subscriber(Protocol):
    """A pub/sub link as the fan-out uses it."""

    async def subscribe(self, *channels: str) -> None: ...

    async def unsubscribe(self, *channels: str) -> None: ...

    def listen(self) -> AsyncIterator[dict[str, Any]]:
        """Messages (`type` "message" or "smessage", `channel`, `data`) until the link fails."""
        ...

    async def aclose(self) -> None: ...


class ChannelSubscriber:
    """Plain pub/sub on one Redis (or the master Sentinel names): one connection."""

    def __init__(self, client: aioredis.Redis) -> None:
        self._client = client
        self._pubsub: PubSub = client.pubsub(ignore_subscribe_messages=True)

    async def subscribe(self, *channels: str) -> None:
        await self._pubsub.subscribe(*channels)

    async def unsubscribe(self, *channels: str) -> None:
        await self._pubsub.unsubscribe(*channels)

    def listen(self) -> AsyncIterator[dict[str, Any]]:
        return self._pubsub.listen()

    async def ping(self, message: bytes) -> None:
        """PING on the subscriber link; `listen()` yields the answer as a "pong" after
        every SUBSCRIBE sent before it (`server.sio.cluster.recovery` waits on it)."""
        await self._pubsub.ping(message)

    async def aclose(self) -> None:
        try:
            await self._pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]
        finally:
            await self._client.aclose()


class ShardLinkDeaf(Exception):
    """A link to a cluster master stopped answering PING (a half-open connection)."""


class ShardChannelMoved(Exception):
    """Redis ended a shard subscription this node still wants (its slot moved: a
    failover or a resharding); the listener subscribes anew on a fresh slot map."""


class ShardedSubscriber:
    """Sharded pub/sub on a Redis Cluster: one connection per master that owns a
    channel this node wants, `SSUBSCRIBE` grouped by slot, one reader per connection
    feeding `listen()`.

    redis-py's `ClusterPubSub` polls its per-node links in turn (`get_sharded_message`
    with a timeout per node), which adds latency per node; here each link has its
    own reader. Topology changes are handled as a single Redis's outages are: any
    failure of a link, a link that stops answering PING (`LINK_PING_SECONDS`), or
    Redis ending a subscription itself (`sunsubscribe` for a channel not being
    unsubscribed), ends `listen()` with the error; the fan-out's listener then makes
    a fresh subscriber, which reads the slot map anew. While one master is away the
    whole fan-out of the node is down (its publishes wait in the outbox), as with
    one Redis.
    """

    def __init__(self, endpoint: RedisEndpoint, name: str, options: Mapping[str, Any]) -> None:
        self._endpoint = endpoint
        self._name = name
        self._options = dict(options)
        self._map: RedisCluster | None = None  # the slot map (and its node list)
        self._links: dict[str, PubSub] = {}  # node name -> its pub/sub link
        self._clients: dict[str, aioredis.Redis] = {}
        self._readers: dict[str, asyncio.Task[None]] = {}
        self._owner: dict[str, str] = {}  # channel -> name of the node it is subscribed on
        self._unsubscribing: collections.Counter[str] = collections.Counter()
        self._unanswered: collections.Counter[str] = collections.Counter()  # pings, by node
        self._watchdog: asyncio.Task[None] | None = None
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue(
            SHARDED_QUEUE_MESSAGES
        )

    async def _slot_map(self) -> RedisCluster:
        if self._map is None:
            client = self._endpoint.client(self._name, **self._options)
            assert isinstance(client, RedisCluster)
            self._map = client
        await self._map.initialize()  # once: reads CLUSTER SLOTS from a seed
        return self._map

    def _link(self, node: ClusterNode) -> PubSub:
        link = self._links.get(node.name)
        if link is None:
            # A plain client on that master, with the endpoint's TLS and credentials.
            # No health_check_interval: its PING on a link with no subscription would
            # read the connection under the reader's feet; `_ping_links` checks the
            # links instead.
            options = {k: v for k, v in self._options.items() if k != "health_check_interval"}
            client = aioredis.Redis(
                host=node.host,
                port=int(node.port),
                ssl=self._endpoint.tls,
                **self._endpoint.node_options({"client_name": self._name, **options}),
            )
            self._clients[node.name] = client
            link = self._links[node.name] = client.pubsub()
        return link

    def _start_reader(self, name: str) -> None:
        reader = self._readers.get(name)
        if reader is None or reader.done():
            link = self._links[name]
            self._readers[name] = asyncio.get_running_loop().create_task(self._read(name, link))
        if self._watchdog is None:
            self._watchdog = asyncio.get_running_loop().create_task(self._ping_links())

    async def subscribe(self, *channels: str) -> None:
        cluster = await self._slot_map()
        for group in _by_slot(cluster, channels):
            node = cluster.get_node_from_key(group[0])
            if node is None:
                raise ShardChannelMoved(f"no node serves the slot of {group[0]!r}")
            await self._link(node).ssubscribe(*group)
            for channel in group:
                self._owner[channel] = node.name
            self._start_reader(node.name)

    async def unsubscribe(self, *channels: str) -> None:
        cluster = await self._slot_map()
        held = [channel for channel in channels if channel in self._owner]
        for group in _by_slot(cluster, held):
            name = self._owner[group[0]]
            for channel in group:
                del self._owner[channel]
                self._unsubscribing[channel] += 1
            await self._links[name].sunsubscribe(*group)

    async def ping(self, message: bytes, channel: str) -> None:
        """PING on the link that holds `channel`; `listen()` yields the answer as a
        "pong" after every SSUBSCRIBE sent on that link before it (the master owning
        the slot of `channel`: `server.sio.cluster.recovery` waits on it)."""
        name = self._owner.get(channel)
        if name is None:
            raise ShardChannelMoved(f"{channel!r} is not subscribed")
        await self._links[name].ping(message)

    async def _read(self, name: str, link: PubSub) -> None:
        try:
            while True:
                message = await link.get_message(timeout=None)
                if message is None:
                    continue
                kind = message["type"]
                if kind == "smessage":
                    await self._queue.put(message)
                elif kind == "pong":
                    self._unanswered[name] = 0
                    if message.get("data"):  # a `ping(message, channel)`'s, not the watchdog's
                        await self._queue.put(message)
                elif kind == "sunsubscribe":
                    self._check_unsubscribed(message["channel"])
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the listener resets everything on any failure
            await self._queue.put(error)

    async def _ping_links(self) -> None:
        try:
            while True:
                await asyncio.sleep(LINK_PING_SECONDS)
                for name, link in list(self._links.items()):
                    self._unanswered[name] += 1
                    if self._unanswered[name] > LINK_DEAF_AFTER_PINGS:
                        raise ShardLinkDeaf(f"{name} left {LINK_DEAF_AFTER_PINGS} pings unanswered")
                    await link.ping()
        except asyncio.CancelledError:
            raise
        except Exception as error:
            await self._queue.put(error)

    def _check_unsubscribed(self, raw: bytes | str) -> None:
        channel = raw.decode() if isinstance(raw, bytes) else raw
        if self._unsubscribing[channel] > 0:  # the answer to our own SUNSUBSCRIBE
            self._unsubscribing[channel] -= 1
            if not self._unsubscribing[channel]:
                del self._unsubscribing[channel]
        elif channel in self._owner:
            raise ShardChannelMoved(f"Redis ended the subscription to {channel!r}")

    async def listen(self) -> AsyncIterator[dict[str, Any]]:
        while True:
            item = await self._queue.get()
            if isinstance(item, BaseException):
                raise item
            yield item

    async def aclose(self) -> None:
        readers = list(self._readers.values())
        if self._watchdog is not None:
            readers.append(self._watchdog)
            self._watchdog = None
        for reader in readers:
            reader.cancel()
        await asyncio.gather(*readers, return_exceptions=True)
        self._readers.clear()
        closing = [link.aclose() for link in self._links.values()]  # type: ignore[no-untyped-call,unused-ignore]
        closing += [client.aclose() for client in self._clients.values()]
        if self._map is not None:
            closing.append(self._map.aclose())
        self._links.clear()
        self._clients.clear()
        self._map = None
        results = await asyncio.gather(*closing, return_exceptions=True)
        for result in results:
            if isinstance(result, Exception):
                raise result


def _by_slot(cluster: RedisCluster, channels: Iterable[str]) -> list[list[str]]:
    """`channels` grouped by hash slot: one SSUBSCRIBE may not cross slots (CROSSSLOT)."""
    groups: dict[int, list[str]] = collections.defaultdict(list)
    for channel in channels:
        groups[cluster.keyslot(channel)].append(channel)
    return list(groups.values())
