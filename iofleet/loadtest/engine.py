"""The load engine: arrivals per phase, virtual users running flows, one tick a second.

One event loop drives every virtual user of this process; `workers.py` runs
several processes and merges their ticks. Each virtual user is one task, plus
its connection's reader task while it is connected; nothing else per user.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import time
from collections import deque
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

from iofleet.loadtest.client import (
    AckTimeout,
    ConnectFailed,
    NotConnected,
    SioConnection,
    socket_url,
)
from iofleet.loadtest.scenario import Connect, Scenario, Step, Templater, vu_values
from iofleet.loadtest.stats import Tick

MARK = "\x00mark\x00"
"""What `{{ $mark }}` becomes until the emit knows the room it goes to."""
MARK_PREFIX = " ~"
APP_EVENTS_IGNORED = frozenset({"server:hello"})
RATE_LIMITED = "rate limited"
UNSENT_KEPT = 100_000


@dataclass(frozen=True)
class Auth:
    """How virtual users get tokens: sign them (HS256 secret), or ask `/auth/guest`."""

    jwt_secret: str | None = None
    token_ttl: int = 3600


@dataclass
class VirtualUser:
    number: int
    templater: Templater
    connection: SioConnection | None = None
    rooms: set[str] = field(default_factory=set)
    seq: dict[str, int] = field(default_factory=dict)
    """Next mark number per room this user sends to."""
    heard: dict[tuple[str, str], int] = field(default_factory=dict)
    """(sender, room) -> last mark number heard, for gaps (lost messages)."""
    lost: bool = False
    """The server or network closed this user's connection (the user then ends)."""


class Engine:
    """Runs one scenario from this process: `worker` of `workers` shares the arrivals."""

    def __init__(
        self,
        scenario: Scenario,
        target: str,
        auth: Auth,
        worker: int = 0,
        workers: int = 1,
        seed: int | None = None,
        grace: float = 5.0,
    ) -> None:
        self.scenario = scenario
        self.target = target.rstrip("/")
        self.url = socket_url(self.target)
        self.auth = auth
        self.worker = worker
        self.workers = workers
        self.rng = random.Random(seed if seed is None else seed + worker)
        self.grace = grace
        self.tick = Tick(second=0)
        self.connections = 0
        self.vusers: set[asyncio.Task[None]] = set()
        self.phase = ""
        self._started = 0.0
        self._next_vu = 0
        self._stopping = False
        # (sender, room, number) of marked messages the server refused or never acked,
        # so receivers do not count them as lost; the oldest are forgotten past a bound.
        self._unsent: set[tuple[str, str, int]] = set()
        self._unsent_order: deque[tuple[str, str, int]] = deque()
        self.connecting = 0
        """Connects under way (capacity levels wait for them before measuring)."""
        self._no_connects = asyncio.Event()
        self._no_connects.set()
        self._session: aiohttp.ClientSession | None = None
        self.hold = False
        """Capacity mode: a user whose flow ends stays connected until the run stops."""

    # --- running --------------------------------------------------------------

    async def run(self, on_tick: Callable[[Tick], None], stop: asyncio.Event | None = None) -> None:
        """Every phase, then up to `grace` seconds for users to finish; a tick a second."""
        stop = stop or asyncio.Event()
        async with self.running(on_tick):
            await self._arrivals(stop)
            if not stop.is_set() and self.vusers:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.grace):
                        await asyncio.wait(set(self.vusers))

    @contextlib.asynccontextmanager
    async def running(self, on_tick: Callable[[Tick], None]) -> AsyncIterator[None]:
        """The HTTP session and the ticker; on the way out every user is stopped."""
        connector = aiohttp.TCPConnector(limit=0, force_close=True)
        async with aiohttp.ClientSession(connector=connector) as session:
            self._session = session
            self._started = time.monotonic()
            ticker = asyncio.create_task(self._ticks(on_tick))
            try:
                yield
            finally:
                await self.stop_users()
                ticker.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await ticker
                self._emit_tick(on_tick)

    async def connects_settled(self, within: float) -> None:
        """Return once no connect is under way, or after `within` seconds."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(within):
                await self._no_connects.wait()

    async def stop_users(self) -> None:
        self._stopping = True
        users = list(self.vusers)
        for task in users:
            task.cancel()
        if users:
            await asyncio.gather(*users, return_exceptions=True)

    async def _arrivals(self, stop: asyncio.Event) -> None:
        step = 0.01
        for phase in self.scenario.config.phases:
            self.phase = phase.name or f"phase {self.scenario.config.phases.index(phase) + 1}"
            cap = None if phase.max_vusers is None else max(1, phase.max_vusers // self.workers)
            begin = last = time.monotonic()
            due = 0.0
            while not stop.is_set():
                now = time.monotonic()
                elapsed = now - begin
                if elapsed >= phase.duration:
                    break
                # Integrate over the time that really passed: a busy loop sleeps longer
                # than asked, and the arrivals must not fall behind the schedule.
                due += phase.rate_at(elapsed) / self.workers * (now - last)
                last = now
                while due >= 1.0:
                    due -= 1.0
                    if cap is None or len(self.vusers) < cap:
                        self.start_user()
                await asyncio.sleep(step)

    def start_user(self) -> None:
        self._next_vu += 1
        number = self._next_vu * self.workers + self.worker
        task = asyncio.create_task(self._user(number))
        self.vusers.add(task)
        task.add_done_callback(self.vusers.discard)

    async def _ticks(self, on_tick: Callable[[Tick], None]) -> None:
        while True:
            await asyncio.sleep(self._started + self.tick.second + 1 - time.monotonic())
            self._emit_tick(on_tick)

    def _emit_tick(self, on_tick: Callable[[Tick], None]) -> None:
        tick, self.tick = self.tick, Tick(second=self.tick.second + 1)
        tick.phase = self.phase
        tick.connections = self.connections
        tick.vusers = len(self.vusers)
        on_tick(tick)

    # --- one virtual user -------------------------------------------------------

    async def _user(self, number: int) -> None:
        config = self.scenario.config
        flow = self.scenario.pick(self.rng)
        user = VirtualUser(number, Templater({}, self.rng, lambda: MARK))
        user.templater.values = vu_values(config, number, self.rng)
        try:
            await self._steps(user, flow.flow)
            if self.hold:
                await asyncio.Event().wait()
        except _UserEnds:
            pass
        finally:
            if user.connection is not None:
                await self._disconnect(user)

    async def _steps(self, user: VirtualUser, steps: list[Step]) -> None:
        for step in steps:
            if step.loop is not None:
                count = 0
                while step.count is None or count < step.count:
                    await self._steps(user, step.loop)
                    count += 1
                    # A loop of sends without acks or thinks may never wait on anything:
                    # yield once a round so the ticker, the readers and a stop still run.
                    await asyncio.sleep(0)
            elif step.connect is not None:
                await self._connect(user, step.connect)
            elif step.disconnect:
                await self._disconnect(user)
            elif step.join is not None:
                room = str(user.templater.fill(step.join))
                answer = await self._emit(user, "room:join", {"room": room}, ack=True)
                if isinstance(answer, dict) and answer.get("ok"):
                    user.rooms.add(room)
            elif step.emit is not None:
                data = self._stamp(user, user.templater.fill(step.emit.data))
                await self._emit(user, step.emit.channel, data, ack=step.emit.acknowledge)
            elif step.think is not None:
                await asyncio.sleep(step.think)

    async def _connect(self, user: VirtualUser, connect: Connect) -> None:
        assert self._session is not None
        if user.connection is not None:
            await self._disconnect(user)
        tick = self.tick
        tick.connect_attempts += 1
        begin = time.monotonic()
        connection = SioConnection(
            self._session,
            self.url,
            on_event=lambda event, args: self._on_event(user, event, args),
            on_lost=lambda reason: self._on_lost(user, reason),
        )
        self.connecting += 1
        self._no_connects.clear()
        try:
            auth = await self._auth_payload(user, connect)
            await connection.connect(auth, self.scenario.config.connect_timeout)
        except ConnectFailed as error:
            self.tick.error(error.kind, error.reason)
            raise _UserEnds from None
        finally:
            self.connecting -= 1
            if not self.connecting:
                self._no_connects.set()
        self.tick.connect_ms.record((time.monotonic() - begin) * 1000)
        self.tick.connects += 1
        self.connections += 1
        user.connection = connection
        user.lost = False
        user.heard.clear()  # a new session: marks start afresh

    async def _auth_payload(self, user: VirtualUser, connect: Connect) -> dict[str, Any] | None:
        if connect.auth == "none":
            return None
        if connect.auth == "token":
            return {"token": user.templater.fill(connect.token)}
        if connect.auth == "signed":
            if not self.auth.jwt_secret:
                raise ConnectFailed("refused", "auth: signed needs a JWT secret (--jwt-secret-env)")
            now = int(time.time())
            claims = {"sub": f"load-{user.number}", "iat": now, "exp": now + self.auth.token_ttl}
            return {"token": jwt.encode(claims, self.auth.jwt_secret, algorithm="HS256")}
        assert self._session is not None
        try:
            async with self._session.post(f"{self.target}/auth/guest") as response:
                if response.status != 200:
                    raise ConnectFailed("refused", f"guest token: HTTP {response.status}")
                return {"token": (await response.json())["token"]}
        except (aiohttp.ClientError, OSError) as error:
            raise ConnectFailed("refused", f"guest token: {type(error).__name__}") from None

    async def _disconnect(self, user: VirtualUser) -> None:
        connection, user.connection = user.connection, None
        user.rooms.clear()
        if connection is not None and connection.open:
            self.connections -= 1
            await connection.close()

    def _on_lost(self, user: VirtualUser, reason: str) -> None:
        if user.connection is not None:
            user.connection = None
            user.lost = True
            user.rooms.clear()
            self.connections -= 1
            if not self._stopping:
                self.tick.error("disconnected", reason)

    async def _emit(self, user: VirtualUser, event: str, data: Any, ack: bool) -> Any:
        if user.connection is None:
            if user.lost:
                raise _UserEnds  # counted as disconnected when it happened
            # As in Artillery, a flow that sends before (or after) any `connect` step
            # connects with the defaults.
            await self._connect(user, Connect())
        connection = user.connection
        assert connection is not None
        begin = time.monotonic()
        self.tick.emitted += 1
        try:
            answer = await connection.emit(event, data, ack, self.scenario.config.ack_timeout)
        except AckTimeout:
            self.tick.error("timeout", f"no ack for {event}")
            self._forget_mark(user, data)
            return None
        except NotConnected:
            self._forget_mark(user, data)
            raise _UserEnds from None
        if ack:
            self.tick.acked += 1
            self.tick.ack_ms.record((time.monotonic() - begin) * 1000)
            if isinstance(answer, dict) and answer.get("ok") is False:
                self._forget_mark(user, data)
                if answer.get("error") == RATE_LIMITED:
                    self.tick.error("rate_limited")
                else:
                    self.tick.reasons[f"rejected: {str(answer.get('error'))[:80]}"] += 1
        return answer

    # --- marks: delivery latency and lost messages ---------------------------------

    def _stamp(self, user: VirtualUser, data: Any) -> Any:
        """Replace `{{ $mark }}` in a top-level `text` with sender, room, number, time."""
        if not isinstance(data, dict):
            return data
        text = data.get("text")
        if not isinstance(text, str) or MARK not in text:
            return data
        room = str(data.get("room", ""))
        number = user.seq.get(room, 0) + 1
        user.seq[room] = number
        sent_us = time.monotonic_ns() // 1000
        stamp = f"{MARK_PREFIX}{self.worker}.{user.number}.{number}.{sent_us}"
        return {**data, "text": text.replace(MARK, stamp)}

    def _forget_mark(self, user: VirtualUser, data: Any) -> None:
        mark = _parse_mark(data.get("text") if isinstance(data, dict) else None)
        if mark is not None:
            key = (mark[0], str(data.get("room", "")), mark[1])
            self._unsent.add(key)
            self._unsent_order.append(key)
            if len(self._unsent_order) > UNSENT_KEPT:
                self._unsent.discard(self._unsent_order.popleft())

    def _on_event(self, user: VirtualUser, event: str, args: list[Any]) -> None:
        if event in APP_EVENTS_IGNORED:
            return
        payload = args[0] if args else None
        if event == "error":
            if isinstance(payload, dict) and payload.get("error") == RATE_LIMITED:
                self.tick.error("rate_limited")
            return
        self.tick.delivered += 1
        if not isinstance(payload, dict):
            return
        mark = _parse_mark(payload.get("text"))
        if mark is None:
            return
        sender, number, sent_us = mark
        self.tick.delivery_ms.record((time.monotonic_ns() // 1000 - sent_us) / 1000)
        if not sender.startswith(f"{self.worker}."):
            return  # refusals of another process's senders are not known here
        room = str(payload.get("room", ""))
        key = (sender, room)
        last = user.heard.get(key)
        user.heard[key] = max(number, last or 0)
        if last is not None and number > last + 1:
            missing = sum(
                1 for n in range(last + 1, number) if (sender, room, n) not in self._unsent
            )
            if missing:
                self.tick.errors["lost"] += missing


def _parse_mark(text: Any) -> tuple[str, int, int] | None:
    """`(sender, number, sent_us)` from a stamped text, or None."""
    if not isinstance(text, str):
        return None
    at = text.rfind(MARK_PREFIX)
    if at < 0:
        return None
    parts = text[at + len(MARK_PREFIX) :].split(".")
    if len(parts) != 4:
        return None
    try:
        return f"{parts[0]}.{parts[1]}", int(parts[2]), int(parts[3])
    except ValueError:
        return None


class _UserEnds(Exception):
    """This virtual user cannot go on (its error is already counted)."""
