"""The fan-out on every Redis topology `IOFLEET_REDIS_URL` can name (server/net/redis_topology.py):
a Redis Cluster of three masters through sharded pub/sub, a Sentinel-watched master that
fails over, one Redis over TLS with a password, and URLs that are wrong."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from redis.asyncio.cluster import RedisCluster

from iofleet.local_servers import redis_command
from iofleet.processes import free_port, stop_pid
from server.net.redis_topology import RedisUrlError, parse_redis_url, redacted
from server.settings import SettingsError, load_settings
from tests.server.fanout_support import (
    cross_nodes,
    join_room,
    sid_acks_and_namespace_emits_cross,
    status,
)
from tests.server.test_routing import ROUTING_APP, CountingRelay
from tests.support.jsclient import JsClients
from tests.support.procs import (
    TEST_JWT_SECRET,
    ServerProcess,
    make_token,
    run_module,
    two_nodes,
    wait_until,
)
from tests.support.redis_topologies import RedisClusterServers, SentinelRedis

FAST = {"IOFLEET_RATE_LIMIT": "100000"}
PASSWORD = "s3cret-Redis-token"


def room_channel(room: str) -> str:
    return f"iofleet#room#/#{room}"


# --- URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://:s3cret@cache:6379", "scheme must be redis://, rediss://, unix://"),
        ("redis://:s3cret@cache:port/0", "Port could not be cast to integer"),
        ("redis://:s3cret@cache:6379/zero", "the database must be a number"),
        ("redis+sentinel://:s3cret@10.0.0.1:26379/mymaster", "needs /<db>/<service name>"),
        ("redis+sentinel://10.0.0.1/0/mymaster", "'10.0.0.1' is not host:port"),
        ("redis+cluster://:s3cret@10.0.0.1:7000/3", "a Redis Cluster has database 0 only"),
        ("rediss+cluster://10.0.0.1:7000,10.0.0.2:x", "'10.0.0.2:x' is not host:port"),
        ("rediss://:s3cret@cache:6379/0?socket_timeout=soon", "Invalid value for 'socket_timeout'"),
    ],
)
def test_a_wrong_redis_url_is_one_line_without_the_password(
    monkeypatch: pytest.MonkeyPatch, url: str, message: str
) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", TEST_JWT_SECRET)
    monkeypatch.setenv("IOFLEET_REDIS_URL", url)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    line = str(caught.value)
    assert line.startswith("invalid setting IOFLEET_REDIS_URL: ") and message in line
    assert "\n" not in line and "s3cret" not in line


def test_a_wrong_redis_url_stops_the_server_with_one_line() -> None:
    env = {
        "PATH": "/usr/bin:/bin",
        "IOFLEET_JWT_SECRET": TEST_JWT_SECRET,
        "IOFLEET_REDIS_URL": "redis+cluster://:s3cret@10.0.0.1:7000/2",
    }
    result = run_module("server", env=env, within=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "iofleet: invalid setting IOFLEET_REDIS_URL: 'redis+cluster://:***@10.0.0.1:7000/2': "
        "a Redis Cluster has database 0 only, as in "
        "redis+cluster://[user:password@]host:port[,host:port]"
    ]


def test_urls_name_their_topology_and_options() -> None:
    elasticache = parse_redis_url("rediss://:tok@master.cache.amazonaws.com:6379/0")
    assert (elasticache.topology, elasticache.tls) == ("single", True)
    assert str(elasticache) == "rediss://:***@master.cache.amazonaws.com:6379/0"

    sentinel = parse_redis_url("redis+sentinel://app:pw@10.0.0.1:26379,10.0.0.2:26380/2/cache")
    assert sentinel.topology == "sentinel" and sentinel.service == "cache"
    assert sentinel.addresses == (("10.0.0.1", 26379), ("10.0.0.2", 26380))
    assert {k: sentinel.options[k] for k in ("username", "password", "db")} == {
        "username": "app",
        "password": "pw",
        "db": 2,
    }

    cluster = parse_redis_url(
        "rediss+cluster://:tok@cfg.cache.amazonaws.com:6379?ssl_ca_certs=/etc/ca.pem"
    )
    assert (cluster.topology, cluster.tls, cluster.addresses) == (
        "cluster",
        True,
        (("cfg.cache.amazonaws.com", 6379),),
    )
    client = cluster.client("iofleet-n1-app")
    assert isinstance(client, RedisCluster)
    kwargs = client.nodes_manager.connection_kwargs
    assert kwargs["password"] == "tok" and kwargs["ssl_ca_certs"] == "/etc/ca.pem"
    assert kwargs["client_name"] == "iofleet-n1-app"
    assert "SSL" in kwargs["connection_class"].__name__
    assert redacted("redis://user:pw@h:1/0") == "redis://user:***@h:1/0"
    with pytest.raises(RedisUrlError):
        parse_redis_url("valkey://h:1")


@pytest.mark.parametrize(
    "url",
    [
        "redis+cluster://10.0.0.1:7000?socket_timeout=7",
        "redis+sentinel://10.0.0.1:26379/0/cache?socket_timeout=7",
        "redis://10.0.0.1:6379/0?socket_timeout=7",
    ],
)
async def test_the_url_wins_over_the_nodes_own_options(url: str) -> None:
    """As in redis-py's from_url: a query argument overrides what the node asks for."""
    client = parse_redis_url(url).client("iofleet-n1-publisher", socket_timeout=2)
    try:
        if isinstance(client, RedisCluster):
            kwargs = client.nodes_manager.connection_kwargs
        else:
            kwargs = client.connection_pool.connection_kwargs
        assert kwargs["socket_timeout"] == 7.0
        assert kwargs["client_name"] == "iofleet-n1-publisher"
    finally:
        await client.aclose()


def test_redis_py_url_parser_surface() -> None:
    """Pins `redis.asyncio.connection.parse_url`, which parse_redis_url relies on for
    the user, password, db and query arguments of sentinel and cluster URLs."""
    from redis.asyncio.connection import parse_url

    parsed = parse_url("rediss://u:p%40ss@h:7/3?ssl_cert_reqs=none&socket_timeout=2")
    assert parsed["username"] == "u" and parsed["password"] == "p@ss"
    assert parsed["db"] == 3 and parsed["socket_timeout"] == 2.0
    assert parsed["ssl_cert_reqs"] == "none" and parsed["host"] == "h"


# --- Redis Cluster: sharded pub/sub ------------------------------------------------


@pytest.fixture(scope="module")
def redis_cluster() -> Iterator[tuple[RedisClusterServers, list[CountingRelay]]]:
    """Three masters, each announcing to clients a relay that counts what it sends whom."""
    relays = [CountingRelay(0) for _ in range(3)]
    cluster = RedisClusterServers(announce_ports=[relay.port for relay in relays]).start()
    for relay, port in zip(relays, cluster.ports, strict=True):
        relay.redis_port = port
        relay.start()
    yield cluster, relays
    for relay in relays:
        relay.stop()
    cluster.stop()


@pytest.fixture(scope="module")
def cluster_nodes(
    redis_cluster: tuple[RedisClusterServers, list[CountingRelay]],
) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"IOFLEET_REDIS_URL": redis_cluster[0].url, "IOFLEET_HANDLERS": ROUTING_APP, **FAST}
    with two_nodes(env) as nodes:
        yield nodes


def rooms_on_two_masters(cluster: RedisClusterServers) -> tuple[str, str]:
    """Two room names whose channels hash to slots of different masters."""
    first = "room-0"
    for index in range(1, 100):
        other = f"room-{index}"
        if cluster.master_of(room_channel(other)) != cluster.master_of(room_channel(first)):
            return first, other
    raise AssertionError("no two rooms on different masters")


async def test_cluster_rooms_travel_on_their_shards_only(
    redis_cluster: tuple[RedisClusterServers, list[CountingRelay]],
    cluster_nodes: tuple[ServerProcess, ServerProcess],
    js: JsClients,
    py_clients,
) -> None:
    cluster, relays = redis_cluster
    node_a, node_b = cluster_nodes
    busy, quiet = rooms_on_two_masters(cluster)
    on_a = await py_clients(node_a.url, user="on-a")
    for room in (busy, quiet):
        assert (await on_a.sio.call("room:join", {"room": room}, timeout=10))["ok"]
    await js.open("on-b", node_b.url, auth={"token": make_token("on-b")}, transports=["websocket"])
    await js.wait_client("on-b", "connect")
    assert (await js.call("on-b", "room:join", {"room": quiet}))["ok"]
    # Sharded subscriptions (SSUBSCRIBE), each on the master owning the room's slot.
    wait_until(lambda: cluster.shard_subscribers(room_channel(quiet)) == 2, what="both on quiet")
    assert cluster.shard_subscribers(room_channel(busy)) == 1  # node A only
    assert cluster.master_of(room_channel(busy)) != cluster.master_of(room_channel(quiet))

    def seen_by_b() -> bytes:
        return b"".join(relay.received(by=b"iofleet-node-b-") for relay in relays)

    for relay in relays:
        relay.reset()
    for i in range(30):
        reply = await on_a.sio.call("chat:message", {"room": busy, "text": f"BUSY-MARK-{i}"})
        assert reply == {"ok": True}
    assert (await on_a.sio.call("chat:message", {"room": quiet, "text": "QUIET-MARK"}))["ok"]
    message = await js.wait_for(
        lambda m: m.get("client") == "on-b" and m.get("event") == "chat:message"
    )
    assert message["args"][0]["text"] == "QUIET-MARK"
    await on_a.wait(lambda: len(on_a.received("chat:message")) == 31)
    assert b"QUIET-MARK" in seen_by_b()
    assert b"BUSY-MARK" not in seen_by_b(), "node B was sent a room it has no member in"

    assert (await js.call("on-b", "room:leave", {"room": quiet}))["ok"]
    wait_until(lambda: cluster.shard_subscribers(room_channel(quiet)) == 1, what="B off quiet")
    for relay in relays:
        relay.reset()
    assert (await on_a.sio.call("chat:message", {"room": quiet, "text": "AFTER-MARK"}))["ok"]
    await on_a.wait(lambda: len(on_a.received("chat:message")) == 32)
    await asyncio.sleep(0.3)
    assert b"AFTER-MARK" not in seen_by_b()


async def test_cluster_sid_emits_acks_and_namespace_emits_cross_nodes(
    redis_cluster: tuple[RedisClusterServers, list[CountingRelay]],
    cluster_nodes: tuple[ServerProcess, ServerProcess],
    js: JsClients,
    py_clients,
) -> None:
    cluster, _ = redis_cluster
    node_a, node_b = cluster_nodes
    # Every node's shared channel and heartbeat are shard subscriptions too.
    assert cluster.shard_subscribers("iofleet") == 2
    await sid_acks_and_namespace_emits_cross(js, py_clients, node_a, node_b)
    assert status(node_a.admin_url)["redis"] == "up" and status(node_b.admin_url)["redis"] == "up"


async def test_cluster_a_link_gone_quiet_to_one_master_is_noticed(
    redis_cluster: tuple[RedisClusterServers, list[CountingRelay]],
    cluster_nodes: tuple[ServerProcess, ServerProcess],
    js: JsClients,
) -> None:
    cluster, relays = redis_cluster
    node_a, node_b = cluster_nodes
    # A master that holds no node's heartbeat channel: there only the sharded
    # subscriber's own per-link PING can notice a link that went quiet.
    heartbeats = cluster.shard_channels("iofleet#heartbeat#*")
    quiet_master = next(port for port, channels in heartbeats.items() if not channels)
    room = next(
        f"quiet-{i}"
        for i in range(200)
        if cluster.master_of(room_channel(f"quiet-{i}")) == quiet_master
    )
    await join_room(js, {"a1": node_a, "b1": node_b}, room=room)
    await cross_nodes(js, room, "before")
    relay = relays[cluster.ports.index(quiet_master)]
    assert relay.deafen() >= 2  # both nodes' links to that master: open, and silent
    await asyncio.to_thread(
        wait_until,
        lambda: any(
            "ShardLinkDeaf" in str(e.get("reason"))
            for e in node_b.log_entries()
            if e.get("event") == "fanout.listen_failed"
        ),
        15,
        "node B noticing its link to one master went quiet",
    )
    await cross_nodes(js, room, "after going quiet")


async def test_cluster_master_restart_resumes_and_delivers_the_outbox(
    redis_cluster: tuple[RedisClusterServers, list[CountingRelay]],
    cluster_nodes: tuple[ServerProcess, ServerProcess],
    js: JsClients,
) -> None:
    cluster, _ = redis_cluster
    node_a, node_b = cluster_nodes
    await join_room(js, {"a1": node_a, "b1": node_b}, room="outage")
    await cross_nodes(js, "outage", "before")
    down = cluster.ports.index(cluster.master_of(room_channel("outage")))
    cluster.kill(down)
    for node in (node_a, node_b):
        await asyncio.to_thread(
            wait_until, lambda n=node: status(n.admin_url)["redis"] == "down", 15
        )
    mark = len(js.messages)
    during = [f"during-{i}" for i in range(5)]
    for text in during:
        assert (await js.call("a1", "chat:message", {"room": "outage", "text": text}))["ok"]
    await asyncio.to_thread(cluster.restart, down)

    def texts_to_b1() -> list[str]:
        return [
            m["args"][0]["text"]
            for m in js.messages[mark:]
            if m.get("client") == "b1" and m.get("event") == "chat:message"
        ]

    # Every message of the outage, in order, once the shard is back.
    await js.wait_for(lambda m: texts_to_b1() == during, timeout=20, start=mark)
    assert texts_to_b1() == during


# --- Sentinel: failover -------------------------------------------------------------


@pytest.fixture
def sentinel_redis() -> Iterator[SentinelRedis]:
    topology = SentinelRedis(sentinels=3).start()
    yield topology
    topology.stop()


async def test_sentinel_failover_resumes_fanout_and_delivers_the_outbox(
    sentinel_redis: SentinelRedis, start_server, js: JsClients, py_clients
) -> None:
    env = {"IOFLEET_REDIS_URL": sentinel_redis.url, **FAST}
    node_a = start_server("node-a", **env)
    node_b = start_server("node-b", **env)
    on_a = await py_clients(node_a.url, user="on-a")
    assert (await on_a.sio.call("room:join", {"room": "r"}, timeout=10))["ok"]
    await js.open("on-b", node_b.url, auth={"token": make_token("on-b")}, transports=["websocket"])
    await js.wait_client("on-b", "connect")
    assert (await js.call("on-b", "room:join", {"room": "r"}))["ok"]

    def texts() -> list[str]:
        return [m["text"] for m in on_a.received("chat:message") if m["from"] == "on-b"]

    assert (await js.call("on-b", "chat:message", {"room": "r", "text": "before"}))["ok"]
    await on_a.wait(lambda: texts() == ["before"])

    old_master = sentinel_redis.master_address()
    killed_at = time.monotonic()
    sentinel_redis.kill_master()
    # Published while no master answers: node B holds them in its outbox.
    during = [f"during-{i}" for i in range(5)]
    for text in during:
        assert (await js.call("on-b", "chat:message", {"room": "r", "text": text}))["ok"]
    await on_a.wait(lambda: len(texts()) > 1, timeout=30)
    resumed_after = time.monotonic() - killed_at
    await on_a.wait(lambda: texts() == ["before", *during], timeout=10)
    assert sentinel_redis.master_address() == sentinel_redis.replica_port != old_master
    print(f"\nsentinel failover: fan-out resumed {resumed_after:.2f} s after SIGKILL of the master")

    # And the other way, node A to node B, on the new master.
    assert (await on_a.sio.call("chat:message", {"room": "r", "text": "after"}))["ok"]
    message = await js.wait_for(
        lambda m: (
            m.get("client") == "on-b"
            and m.get("event") == "chat:message"
            and m["args"][0]["text"] == "after"
        )
    )
    assert message["args"][0]["from"] == "on-a"


# --- TLS and AUTH (ElastiCache in-transit encryption) ------------------------------


def self_signed_certificate(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (its own CA) and its key, as PEM files."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "iofleet test redis")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "redis.crt", directory / "redis.key"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


@pytest.fixture
def tls_redis(tmp_path: Path) -> Iterator[tuple[int, Path]]:
    """A redis-server speaking TLS only, with a password (as ElastiCache with an AUTH token)."""
    cert, key = self_signed_certificate(tmp_path)
    port = free_port()
    command = [*redis_command(0), "--tls-port", str(port), "--requirepass", PASSWORD]
    command += ["--tls-cert-file", str(cert), "--tls-key-file", str(key)]
    command += ["--tls-ca-cert-file", str(cert), "--tls-auth-clients", "no"]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def answers() -> bool:
        client = redis.Redis(
            host="127.0.0.1", port=port, password=PASSWORD, ssl=True, ssl_ca_certs=str(cert)
        )
        try:
            return bool(client.ping())
        except redis.RedisError:
            return False
        finally:
            client.close()

    try:
        wait_until(answers, timeout=10, what="redis-server over TLS")
        yield port, cert
    finally:
        stop_pid(process.pid, grace=0, first=signal.SIGKILL, process=process)


async def test_fanout_over_tls_with_a_password(
    tls_redis: tuple[int, Path], start_server, js: JsClients, py_clients
) -> None:
    port, cert = tls_redis
    url = f"rediss://:{PASSWORD}@127.0.0.1:{port}/0?ssl_ca_certs={cert}"
    node_a = start_server("node-a", IOFLEET_REDIS_URL=url, **FAST)
    node_b = start_server("node-b", IOFLEET_REDIS_URL=url, **FAST)
    wrong = url.replace(PASSWORD, "not-the-password")
    node_c = start_server("node-c", IOFLEET_REDIS_URL=wrong, **FAST)
    on_a = await py_clients(node_a.url, user="on-a")
    assert (await on_a.sio.call("room:join", {"room": "r"}, timeout=10))["ok"]
    await js.open("on-b", node_b.url, auth={"token": make_token("on-b")}, transports=["websocket"])
    await js.wait_client("on-b", "connect")
    assert (await js.call("on-b", "room:join", {"room": "r"}))["ok"]
    assert (await js.call("on-b", "chat:message", {"room": "r", "text": "over tls"}))["ok"]
    await on_a.wait(lambda: [m["text"] for m in on_a.received("chat:message")] == ["over tls"])
    assert status(node_a.admin_url)["redis"] == "up"
    # A wrong password: the fan-out is down (and says why), the secret is in no log line.
    assert status(node_c.admin_url)["redis"] == "down"
    failures = [e for e in node_c.log_entries() if e.get("event") == "fanout.listen_failed"]
    reasons = [str(e.get("reason")) for e in failures]
    assert reasons and "AuthenticationError" in reasons[0]
    for node in (node_a, node_b, node_c):
        assert PASSWORD not in node.log() and "not-the-password" not in node.log()


async def test_cluster_fetch_sockets_answers_both_nodes(
    cluster_nodes: tuple[ServerProcess, ServerProcess], js: JsClients, py_clients
) -> None:
    """The fleet query's request and reply channels are shard channels too."""
    node_a, node_b = cluster_nodes
    asker = await py_clients(node_a.url, user="asker")
    await js.open("far", node_b.url, auth={"token": make_token("far")}, transports=["websocket"])
    far = (await js.wait_client("far", "connect"))["sid"]
    assert (await asker.sio.call("room:join", {"room": "fq"}, timeout=10))["ok"]
    assert (await js.call("far", "room:join", {"room": "fq"}))["ok"]
    answer = await asker.sio.call("who", {"room": "fq"}, timeout=10)
    assert sorted((sid, node) for sid, node, *_ in answer) == sorted(
        [(asker.sio.get_sid(), "node-a"), (far, "node-b")]
    )
