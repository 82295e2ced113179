"""Real Redis topologies on loopback for the tests: a Redis Cluster of three masters,
and a master with a replica watched by three sentinels. Every process is a
redis-server on 127.0.0.1 on a free port, stopped by its PID.
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import redis

from iofleet.local_servers import redis_command
from iofleet.processes import free_port, redis_answers, stop_pid
from tests.support.procs import wait_until

SLOTS = 16384
SENTINEL_SERVICE = "iofleet-master"
# Sentinel's timings, short for a test (production: 5-30 s): the master is declared
# down after this long without an answer, and a stalled failover retried after
# FAILOVER_TIMEOUT_MS.
DOWN_AFTER_MS = 1000
FAILOVER_TIMEOUT_MS = 3000


def _spawn(command: list[str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        stop_pid(process.pid, grace=0, first=signal.SIGKILL, process=process)
    processes.clear()


@dataclass
class RedisClusterServers:
    """Three cluster masters (no replicas), slots split evenly, `cluster_state:ok`.

    The slots are assigned and the nodes introduced with CLUSTER ADDSLOTSRANGE and
    CLUSTER MEET rather than `redis-cli --cluster create`: the same result without
    its interactive checks, and it lets a node announce another port to clients
    (`announce_ports`: a relay in front of it that counts its bytes).
    """

    masters: int = 3
    announce_ports: list[int] | None = None
    durable: bool = False
    """Each master keeps its data across a SIGKILL (an append-only file synced at every
    write), as a shard whose replica takes over keeps it in production."""
    ports: list[int] = field(default_factory=list)
    processes: list[subprocess.Popen[bytes]] = field(default_factory=list)
    commands: list[list[str]] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def url(self) -> str:
        """The server's `IOFLEET_REDIS_URL`: every master a seed."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{port}" for port in self.client_ports)

    @property
    def client_ports(self) -> list[int]:
        """The ports clients are told about (the relays', when announced)."""
        return self.announce_ports or self.ports

    def start(self) -> RedisClusterServers:
        self.workdir = Path(tempfile.mkdtemp(prefix="iofleet-cluster-"))
        try:
            self._start_nodes()
            self._form_cluster()
        except BaseException:
            self.stop()
            raise
        return self

    def _start_nodes(self) -> None:
        assert self.workdir is not None
        for index in range(self.masters):
            port, bus_port = free_port(), free_port()
            command = [
                *redis_command(port),
                "--cluster-enabled", "yes",
                "--cluster-config-file", str(self.workdir / f"nodes-{port}.conf"),
                "--cluster-port", str(bus_port),
                "--cluster-announce-ip", "127.0.0.1",
                "--cluster-node-timeout", "2000",
                "--dir", str(self.workdir),
            ]  # fmt: skip
            if self.announce_ports:
                command += ["--cluster-announce-port", str(self.announce_ports[index])]
            if self.durable:  # one append-only directory per master: they share the work dir
                command += ["--appendonly", "yes", "--appendfsync", "always"]
                command += ["--appenddirname", f"appendonly-{port}"]
            self.ports.append(port)
            self.commands.append(command)
            self.processes.append(_spawn(command))
        for port in self.ports:
            wait_until(lambda port=port: redis_answers(port), timeout=10, what="cluster node")

    def _form_cluster(self) -> None:
        clients = [redis.Redis(port=port) for port in self.ports]
        try:
            share = SLOTS // self.masters
            for index, client in enumerate(clients):
                last = SLOTS - 1 if index == self.masters - 1 else (index + 1) * share - 1
                client.execute_command("CLUSTER ADDSLOTSRANGE", index * share, last)
            bus_ports = [int(c.config_get("cluster-port")["cluster-port"]) for c in clients]
            for port, bus_port in zip(self.ports[1:], bus_ports[1:], strict=True):
                clients[0].execute_command("CLUSTER MEET", "127.0.0.1", port, bus_port)
        finally:
            for client in clients:
                client.close()
        self._wait_settled("cluster_state:ok on every node")

    def _wait_settled(self, what: str) -> None:
        """Wait until every node says `cluster_state:ok` and knows every master."""
        clients = [redis.Redis(port=port) for port in self.ports]
        try:
            wait_until(
                lambda: all(self._settled(client) for client in clients), timeout=20, what=what
            )
        finally:
            for client in clients:
                client.close()

    def _settled(self, client: redis.Redis) -> bool:
        info = client.execute_command("CLUSTER INFO")  # parsed into a dict by redis-py
        return bool(
            info.get("cluster_state") == "ok"
            and int(info.get("cluster_known_nodes", 0)) == self.masters
        )

    def kill(self, index: int) -> None:
        """SIGKILL master `index` by its PID (no replica takes over: its slots go dark)."""
        process = self.processes[index]
        stop_pid(process.pid, grace=0, first=signal.SIGKILL, process=process)

    def restart(self, index: int) -> None:
        """Start master `index` again on its port, from its nodes.conf (same id, same
        slots), and wait for the whole cluster to be `cluster_state:ok` again."""
        self.processes[index] = _spawn(self.commands[index])
        port = self.ports[index]
        wait_until(lambda: redis_answers(port), timeout=10, what="cluster node")
        self._wait_settled("cluster_state:ok after the restart")

    def shard_channels(self, pattern: str) -> dict[int, list[str]]:
        """Active shard channels matching `pattern`, by master port (PUBSUB SHARDCHANNELS)."""
        found = {}
        for port in self.ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                found[port] = list(client.pubsub_shardchannels(pattern))
            finally:
                client.close()
        return found

    def master_of(self, channel: str) -> int:
        """The (real) port of the master that owns `channel`'s slot."""
        client = redis.Redis(port=self.ports[0])
        try:
            slot = int(client.execute_command("CLUSTER KEYSLOT", channel))
        finally:
            client.close()
        share = SLOTS // self.masters
        return self.ports[min(slot // share, self.masters - 1)]

    def shard_subscribers(self, channel: str) -> int:
        """Shard subscribers of `channel` on the master that owns it (PUBSUB SHARDNUMSUB)."""
        client = redis.Redis(port=self.master_of(channel))
        try:
            counts = dict(client.pubsub_shardnumsub(channel))
        finally:
            client.close()
        return int(counts[channel.encode()])

    def stop(self) -> None:
        _stop(self.processes)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


@dataclass
class SentinelRedis:
    """A master, its replica, and `sentinels` sentinels (quorum: a majority of them)."""

    sentinels: int = 3
    master_port: int = field(default_factory=free_port)
    replica_port: int = field(default_factory=free_port)
    sentinel_ports: list[int] = field(default_factory=list)
    master: subprocess.Popen[bytes] | None = None
    others: list[subprocess.Popen[bytes]] = field(default_factory=list)
    workdir: Path | None = None

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{port}" for port in self.sentinel_ports)
        return f"redis+sentinel://{hosts}/0/{SENTINEL_SERVICE}"

    def start(self) -> SentinelRedis:
        self.workdir = Path(tempfile.mkdtemp(prefix="iofleet-sentinel-"))
        try:
            # In the work dir: a replica writes the RDB of its first sync to disk.
            here = ["--dir", str(self.workdir)]
            self.master = _spawn([*redis_command(self.master_port), *here])
            replica = [*redis_command(self.replica_port), *here, "--replicaof", "127.0.0.1"]
            self.others.append(_spawn([*replica, str(self.master_port)]))
            for port in (self.master_port, self.replica_port):
                wait_until(lambda port=port: redis_answers(port), timeout=10, what="redis-server")
            quorum = self.sentinels // 2 + 1
            for _ in range(self.sentinels):
                self._start_sentinel(quorum)
            wait_until(self._watching, timeout=20, what="sentinels see each other and the replica")
        except BaseException:
            self.stop()
            raise
        return self

    def _start_sentinel(self, quorum: int) -> None:
        assert self.workdir is not None
        port = free_port()
        config = self.workdir / f"sentinel-{port}.conf"  # Sentinel rewrites its config file
        config.write_text(
            f"port {port}\nbind 127.0.0.1\ndir {self.workdir}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master_port} {quorum}\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} {DOWN_AFTER_MS}\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} {FAILOVER_TIMEOUT_MS}\n"
        )
        self.sentinel_ports.append(port)
        self.others.append(_spawn(["redis-server", str(config), "--sentinel"]))
        wait_until(lambda: redis_answers(port), timeout=10, what="sentinel")

    def _watching(self) -> bool:
        """Every sentinel knows the replica (linked to the master) and the other sentinels."""
        for port in self.sentinel_ports:
            client = redis.Redis(port=port, decode_responses=True)
            try:
                replicas = client.execute_command("SENTINEL REPLICAS", SENTINEL_SERVICE)
                peers = client.execute_command("SENTINEL SENTINELS", SENTINEL_SERVICE)
            finally:
                client.close()
            linked = [r for r in replicas if _fields(r).get("master-link-status") == "ok"]
            if not linked or len(peers) != self.sentinels - 1:
                return False
        return True

    def master_address(self) -> int:
        """The master's port as the first sentinel tells it."""
        client = redis.Redis(port=self.sentinel_ports[0], decode_responses=True)
        try:
            _, port = client.execute_command("SENTINEL GET-MASTER-ADDR-BY-NAME", SENTINEL_SERVICE)
        finally:
            client.close()
        return int(port)

    def kill_master(self) -> None:
        """SIGKILL the master by its PID: Sentinel must promote the replica."""
        assert self.master is not None
        stop_pid(self.master.pid, grace=0, first=signal.SIGKILL, process=self.master)
        self.master = None

    def stop(self) -> None:
        if self.master is not None:
            self.kill_master()
        _stop(self.others)
        if self.workdir is not None:
            shutil.rmtree(self.workdir, ignore_errors=True)


def _fields(reply: object) -> dict[str, str]:
    """A Sentinel reply entry (a flat list or a dict, by client version) as a dict."""
    if isinstance(reply, dict):
        return {str(k): str(v) for k, v in reply.items()}
    assert isinstance(reply, list)
    return {str(reply[i]): str(reply[i + 1]) for i in range(0, len(reply) - 1, 2)}
