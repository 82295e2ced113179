"""`--find-capacity`: add users level by level until the service-level objective breaks.

Each level holds its users (they stay connected once their flow has run, so give
the flow an endless `loop` to keep messages flowing), measures for a few
seconds, and is judged on: connect time p99, message p99 (ack round trip, or
delivery latency when larger), the servers' own `iofleet_event_loop_lag_seconds`
(read from their admin `/metrics`), and the error ratio. The largest level that
held is the capacity; divided by the number of servers it goes into the
capacity file `iofleet plan --capacity` reads.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import aiohttp

from iofleet.loadtest.engine import Auth, Engine
from iofleet.loadtest.scenario import Scenario, Slo
from iofleet.loadtest.stats import Tick, Totals
from server.contract import CONNECTIONS_METRIC

LAG_METRIC = "iofleet_event_loop_lag_seconds"


@dataclass(frozen=True)
class Ramp:
    start: int = 100
    step: int = 100
    maximum: int = 10_000
    step_seconds: float = 10.0
    arrival_rate: float = 200.0
    """New users per second while filling a level."""
    settle_seconds: float = 1.0


@dataclass
class Level:
    users: int
    held: bool = False
    connections: int = 0
    server_connections: float | None = None
    connect_p99_ms: float = 0.0
    message_p99_ms: float = 0.0
    loop_lag_ms: float | None = None
    error_ratio: float = 0.0
    errors: dict[str, int] = field(default_factory=dict)
    delivered_per_second: float = 0.0
    emitted_per_second: float = 0.0
    server_rss_mb: float | None = None
    broke: list[str] = field(default_factory=list)


@dataclass
class CapacityResult:
    target: str
    servers: int
    slo: Slo
    levels: list[Level]
    held: Level | None
    totals: Totals
    base_rss_mb: float | None = None
    """The server's resident memory before the first level (`--server-pid`)."""

    @property
    def memory_per_connection_mb(self) -> float | None:
        held = self.held
        if held is None or held.server_rss_mb is None or self.base_rss_mb is None:
            return None
        if not held.connections:
            return None
        per_server = held.connections / self.servers
        return round(max(0.0, held.server_rss_mb - self.base_rss_mb) / per_server, 4)

    @property
    def connections_per_server(self) -> int:
        if self.held is None:
            return 0
        return int(self.held.connections / self.servers)

    @property
    def deliveries_per_second_per_server(self) -> float:
        if self.held is None:
            return 0.0
        return round(self.held.delivered_per_second / self.servers, 1)

    def to_json(self) -> dict[str, Any]:
        memory = self.memory_per_connection_mb
        return {
            "connections_per_server": self.connections_per_server,
            "deliveries_per_second_per_server": self.deliveries_per_second_per_server,
            **({"memory_per_connection_mb": memory} if memory is not None else {}),
            **({"base_memory_mb": self.base_rss_mb} if self.base_rss_mb is not None else {}),
            "measured_at": datetime.now(UTC).isoformat(timespec="seconds"),
            "target": self.target,
            "servers": self.servers,
            "slo": self.slo.model_dump(),
            "held": asdict(self.held) if self.held else None,
            "knee": asdict(self.levels[-1]) if self.levels and not self.levels[-1].held else None,
            "levels": [asdict(level) for level in self.levels],
        }

    def write(self, path: Path) -> None:
        path.write_text(json.dumps(self.to_json(), indent=2) + "\n")


def rss_mb(pid: int | None) -> float | None:
    """Resident memory of a local process (Linux /proc), MB; None when unknown."""
    if pid is None:
        return None
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return round(int(line.split()[1]) * 1024 / 1_000_000, 1)
    except (OSError, ValueError, IndexError):
        return None
    return None


def parse_metric(text: str, name: str) -> float | None:
    """The value of an unlabelled sample `name` in Prometheus text, or None."""
    for line in text.splitlines():
        if line.startswith(name + " "):
            try:
                return float(line.split()[1])
            except (IndexError, ValueError):
                return None
    return None


async def _sample_metrics(
    session: aiohttp.ClientSession, urls: Sequence[str]
) -> tuple[float | None, float | None]:
    """(max loop lag seconds, total connections) across the servers' /metrics."""
    lags: list[float] = []
    connections: list[float] = []
    for url in urls:
        try:
            async with session.get(url, timeout=aiohttp.ClientTimeout(total=2)) as response:
                text = await response.text()
        except (aiohttp.ClientError, OSError, TimeoutError):
            continue
        lag = parse_metric(text, LAG_METRIC)
        count = parse_metric(text, CONNECTIONS_METRIC)
        if lag is not None:
            lags.append(lag)
        if count is not None:
            connections.append(count)
    return (max(lags) if lags else None), (sum(connections) if connections else None)


async def find_capacity(
    scenario: Scenario,
    target: str,
    auth: Auth,
    ramp: Ramp,
    metrics_urls: Sequence[str] = (),
    servers: int = 1,
    on_tick: Callable[[Tick], None] = lambda tick: None,
    on_level: Callable[[Level], None] = lambda level: None,
    server_pid: int | None = None,
) -> CapacityResult:
    slo = scenario.config.slo
    engine = Engine(scenario, target, auth)
    engine.hold = True
    totals = Totals()
    window: list[Tick] = []

    def take(tick: Tick) -> None:
        totals.add(tick)
        window.append(tick)
        on_tick(tick)

    levels: list[Level] = []
    held: Level | None = None
    base_rss = rss_mb(server_pid)
    async with engine.running(take), aiohttp.ClientSession() as metrics_session:
        users = ramp.start
        while users <= ramp.maximum:
            engine.phase = f"level {users}"
            window.clear()
            await _fill(engine, users, ramp.arrival_rate)
            await engine.connects_settled(scenario.config.connect_timeout)
            await asyncio.sleep(ramp.settle_seconds)
            measured_from = len(window)
            lags: list[float] = []
            server_connections: float | None = None
            end = time.monotonic() + ramp.step_seconds
            while time.monotonic() < end:
                lag, count = await _sample_metrics(metrics_session, metrics_urls)
                if lag is not None:
                    lags.append(lag)
                if count is not None:
                    server_connections = count
                await asyncio.sleep(0.5)
            level = _judge(
                users, window, measured_from, lags, server_connections, slo, engine.connections
            )
            level.server_rss_mb = rss_mb(server_pid)
            levels.append(level)
            on_level(level)
            if not level.held:
                break
            held = level
            users += ramp.step
    return CapacityResult(target, servers, slo, levels, held, totals, base_rss)


async def _fill(engine: Engine, users: int, rate: float) -> None:
    """Start users until `users` are alive (users that failed are replaced)."""
    interval = 1.0 / rate
    started = 0
    # A user whose connect fails ends at once; allow as many replacements as the level.
    while len(engine.vusers) < users and started < 2 * users:
        engine.start_user()
        started += 1
        await asyncio.sleep(interval)


def _judge(
    users: int,
    window: list[Tick],
    measured_from: int,
    lags: list[float],
    server_connections: float | None,
    slo: Slo,
    connections: int,
) -> Level:
    ramp_ticks, measured = Tick(second=0), Tick(second=0)
    for index, tick in enumerate(window):
        (measured if index >= measured_from else ramp_ticks).merge(tick)
    everything = Tick(second=0)
    everything.merge(ramp_ticks)
    everything.merge(measured)
    seconds = max(1, len(window) - measured_from)
    attempts = everything.connect_attempts + everything.emitted
    error_count = sum(everything.errors.values())
    level = Level(
        users=users,
        connections=connections,
        server_connections=server_connections,
        connect_p99_ms=round(everything.connect_ms.percentile(99), 2),
        message_p99_ms=round(
            max(measured.ack_ms.percentile(99), measured.delivery_ms.percentile(99)), 2
        ),
        loop_lag_ms=round(max(lags) * 1000, 2) if lags else None,
        error_ratio=round(error_count / attempts, 4) if attempts else 0.0,
        errors={k: v for k, v in everything.errors.items() if v},
        delivered_per_second=round(measured.delivered / seconds, 1),
        emitted_per_second=round(measured.emitted / seconds, 1),
    )
    if level.connect_p99_ms > slo.connect_ms:
        level.broke.append(f"connect p99 {level.connect_p99_ms} ms > {slo.connect_ms} ms")
    if level.message_p99_ms > slo.message_p99_ms:
        level.broke.append(f"message p99 {level.message_p99_ms} ms > {slo.message_p99_ms} ms")
    if level.loop_lag_ms is not None and level.loop_lag_ms > slo.loop_lag_ms:
        level.broke.append(f"event-loop lag {level.loop_lag_ms} ms > {slo.loop_lag_ms} ms")
    if level.error_ratio > slo.error_ratio:
        level.broke.append(f"errors {level.error_ratio:.2%} > {slo.error_ratio:.2%}")
    level.held = not level.broke
    return level
