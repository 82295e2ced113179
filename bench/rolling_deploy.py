"""A rolling deploy of the local fleet under load: what `iofleet restart` costs clients.

Per run: `iofleet up --detach` (3 servers, HAProxy, Redis) with recovery on or off;
300 official JS clients (socket.io-client under Node, tests/js/driver.mjs) in 10
rooms, two thirds WebSocket-only and one third the default polling-then-upgrade; one
publisher in every room sends 40 `chat:message`/s with acks, round robin over the
rooms; `iofleet restart` replaces every server in turn; the publisher goes on for
2 s, stops, and each client's messages are tallied against the acked ones of its
rooms. A client whose reconnect was not recovered joins its rooms again, as the demo
page and any plain Socket.IO application do (with recovery off that is every
reconnect): what it missed meanwhile is lost.

Figures: time to replace all (the `iofleet restart` command), reconnect p50/p95
(a client's `disconnect` to its next `connect`), messages lost and duplicated (summed
over clients), delivery ratio (acked messages received / expected), clients left
disconnected, and with recovery on the events out of stream order.

The drain is shortened (`--drain-delay 1 --drain-seconds 3`, production: 15 + 60)
so a run takes about a minute; the reconnects it causes are the same kind.

With `--autoscaler`, the fleet is `make up`'s kind: the local autoscaler on (`--max 6`,
here `--target-connections 80`, so 301 connections want a fourth server, and a 2 s sync);
the load is put on, the autoscaler settles (4 servers), then the restart holds it and
replaces all four; the run also records what the autoscaler did meanwhile.

    python -m bench.rolling_deploy [--runs 3] [--recovery both|on|off] [--clients 300]
        [--autoscaler]

tests/balancer/test_lb_rolling_restart.py runs `rolling_deploy` once with recovery on
and holds it to zero lost, zero duplicates, stream order, nobody left disconnected.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import itertools
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
from rich.console import Console
from rich.table import Table

from iofleet.fleet_secrets import load_secrets
from iofleet.fleet_state import FleetState
from iofleet.processes import free_port
from tests.support.jsclient import JsClients, Message

REPO = Path(__file__).resolve().parents[1]
PUBLISHER = "publisher"
EVENT = "chat:message"
TAIL_SECONDS = 2.0
"""The publisher keeps sending this long after the last server is replaced."""
SETTLE_SECONDS = 15.0
"""Longest wait, after the last send, for acks and deliveries to arrive."""


@dataclass(frozen=True)
class Load:
    clients: int = 300
    rooms: int = 10
    rate: float = 40.0
    """Messages per second from the publisher."""
    drain_delay: float = 1.0
    drain_seconds: float = 3.0
    max_seconds: float = 120.0
    """The publisher stops after this long whatever happens (bounds every run)."""


@dataclass(frozen=True)
class Autoscale:
    """`make up`'s autoscaler (`iofleet up --max 6 --target-connections T`), syncing fast."""

    max: int = 6
    target_connections: float = 80.0
    sync_seconds: float = 2.0
    scrape_seconds: float = 1.0

    def up_args(self) -> list[str]:
        return ["--max", str(self.max), "--target-connections", f"{self.target_connections:g}"]

    def env(self) -> dict[str, str]:
        return {
            "IOFLEET_AUTOSCALER_SYNC_SECONDS": f"{self.sync_seconds:g}",
            "IOFLEET_AUTOSCALER_SCRAPE_SECONDS": f"{self.scrape_seconds:g}",
        }


@dataclass(frozen=True)
class AutoscalerOutcome:
    """What the autoscaler wanted and did around the restart."""

    desired_before: int
    desired_after: int
    current_after: int
    servers_after: int
    """Servers in fleet.json after the restart, spares left out."""
    acted_while_held: list[dict[str, Any]]
    """Its starts, promotions and drains between `held` and `resumed` (none expected)."""
    current_while_held: list[int]
    """`current` of every sync while held (the fleet's size; one replacement too many
    would show as one more)."""
    holds: int
    """`held` events: the restart's hold was seen (once)."""


@dataclass
class Outcome:
    recovery: bool
    replace_all_s: float
    reconnects_s: list[float]
    sent: int
    acked: int
    expected: int
    """Deliveries due: acked messages x clients in their room (the publisher included)."""
    received: int
    """Of those, received at least once."""
    lost: int
    duplicates: int
    out_of_order: int
    """Events with an offset not above the one before (recovery on; 0 with it off)."""
    left_disconnected: list[str]
    not_recovered: int
    """Reconnects that got a new session (every one with recovery off)."""
    not_acked: Counter[str] = field(default_factory=Counter)
    """Sends without an ok ack, by reason."""
    restart_output: str = ""
    problems: list[str] = field(default_factory=list)
    duplicate_copies: list[list[Message]] = field(default_factory=list)
    """Every copy of each message a client got more than once (its client, offset,
    arrival): what a failing run must show to be diagnosed."""
    autoscaler: AutoscalerOutcome | None = None

    @property
    def delivery_ratio(self) -> float:
        return self.received / self.expected if self.expected else 1.0

    def percentile(self, share: float) -> float:
        if not self.reconnects_s:
            return 0.0
        ordered = sorted(self.reconnects_s)
        return ordered[min(len(ordered) - 1, int(share * len(ordered)))]


def iofleet(
    *args: str, env: dict[str, str], within: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "iofleet", *args],
        capture_output=True, text=True, timeout=within, cwd=REPO, env=env, check=False,
    )  # fmt: skip


def fleet_env(load: Load) -> dict[str, str]:
    return {
        **os.environ,
        "IOFLEET_DRAIN_DELAY": f"{load.drain_delay:g}",
        "IOFLEET_DRAIN_SECONDS": f"{load.drain_seconds:g}",
        # One publisher (one user) sends 40/s: above the per-user default of 20/s.
        "IOFLEET_RATE_LIMIT": "1000",
    }


@contextlib.contextmanager
def local_fleet(
    state_dir: Path,
    env: dict[str, str],
    recovery: bool,
    balancer: str = "haproxy",
    up_args: tuple[str, ...] = (),
) -> Iterator[FleetState]:
    """`iofleet up --detach` ... `iofleet down`, whatever happens in between."""
    flag = "--recovery" if recovery else "--no-recovery"
    port = str(free_port())
    up = iofleet(
        "up", "--detach", "--state-dir", str(state_dir), "--port", port, flag,
        "--balancer", balancer, *up_args, env=env,
    )  # fmt: skip
    try:
        if up.returncode != 0:
            raise RuntimeError(f"iofleet up failed:\n{up.stdout}{up.stderr}")
        state = FleetState.load(state_dir)
        assert state is not None
        yield state
    finally:
        iofleet("down", "--state-dir", str(state_dir), env=env, within=60)


def room_of(index: int, load: Load) -> str:
    return f"room{index % load.rooms}"


def token(secret: str, user: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": user, "iat": now, "exp": now + 3600}, secret, algorithm="HS256")


async def call_all(js: JsClients, calls: list[tuple[str, str, Any]], within: float) -> None:
    """Send every call at once, then wait for all their acks (each must say ok)."""
    ids = [await js.send_call(client, event, data) for client, event, data in calls]
    pending = set(ids)
    deadline = time.monotonic() + within
    index = 0
    while pending:
        while index < len(js.messages):
            message = js.messages[index]
            index += 1
            if message.get("type") == "ack" and message.get("id") in pending:
                if message["error"] or not (message["response"] or {}).get("ok"):
                    raise RuntimeError(f"{message['client']}: {message}")
                pending.discard(message["id"])
        if time.monotonic() > deadline:
            raise TimeoutError(f"{len(pending)} acks missing after {within:g}s")
        await asyncio.sleep(0.02)


async def open_clients(js: JsClients, url: str, secret: str, load: Load) -> dict[str, list[str]]:
    """Every client connected and in its room; the publisher in all. Returns rooms by client."""
    rooms = {f"c{i:03d}": [room_of(i, load)] for i in range(load.clients)}
    rooms[PUBLISHER] = [f"room{r}" for r in range(load.rooms)]
    for i, name in enumerate(rooms):
        options: dict[str, Any] = {"auth": {"token": token(secret, name)}}
        if i % 3:
            options["transports"] = ["websocket"]
        await js.open(name, url, **options)
    deadline = time.monotonic() + 60
    while len({m["client"] for m in js.messages if m.get("type") == "connect"}) < len(rooms):
        if time.monotonic() > deadline:
            raise TimeoutError("not every client connected within 60 s")
        await asyncio.sleep(0.05)
    joins = [(name, "room:join", {"room": room}) for name, names in rooms.items() for room in names]
    await call_all(js, joins, within=30)
    return rooms


async def rejoin_new_sessions(
    js: JsClients, rooms: dict[str, list[str]], stop: asyncio.Event
) -> None:
    """A reconnect that was not recovered joins its rooms again (what applications do)."""
    first: set[str] = set()
    index = 0
    while not stop.is_set():
        while index < len(js.messages):
            message = js.messages[index]
            index += 1
            if message.get("type") != "connect":
                continue
            name = message["client"]
            if name in first and not message.get("recovered"):
                for room in rooms[name]:
                    await js.emit(name, "room:join", {"room": room})
            first.add(name)
        await asyncio.sleep(0.02)


async def publish(js: JsClients, load: Load, stop: asyncio.Event) -> list[tuple[int, str, str]]:
    """40/s with acks, round robin over the rooms, until `stop` (or `max_seconds`):
    (ack id, room, text) of each message sent."""
    sent: list[tuple[int, str, str]] = []
    started = time.monotonic()
    while not stop.is_set() and time.monotonic() - started < load.max_seconds:
        index = len(sent)
        room, text = room_of(index, load), f"m{index:05d}"
        sent.append(
            (await js.send_call(PUBLISHER, EVENT, {"room": room, "text": text}), room, text)
        )
        next_at = started + (index + 1) / load.rate
        await asyncio.sleep(max(0.0, next_at - time.monotonic()))
    return sent


def refusals(js: JsClients, sent: list[tuple[int, str, str]]) -> Counter[str]:
    """Why sends were not acknowledged: the driver's error, the server's ack, or no ack."""
    ids = {ack_id for ack_id, _, _ in sent}
    answers = {m["id"]: m for m in js.messages if m.get("type") == "ack" and m["id"] in ids}
    why: Counter[str] = Counter()
    for ack_id in ids:
        m = answers.get(ack_id)
        if m is None:
            why["no answer"] += 1
        elif m["error"]:
            why[str(m["error"])] += 1
        elif not (m["response"] or {}).get("ok"):
            why[str((m["response"] or {}).get("error"))] += 1
    return why


def acked_texts(js: JsClients, sent: list[tuple[int, str, str]]) -> dict[str, list[str]]:
    """Texts the server acknowledged ({ok: true}), by room, in sending order."""
    ok = {
        m["id"]
        for m in js.messages
        if m.get("type") == "ack" and not m["error"] and (m["response"] or {}).get("ok")
    }
    by_room: dict[str, list[str]] = {}
    for ack_id, room, text in sent:
        if ack_id in ok:
            by_room.setdefault(room, []).append(text)
    return by_room


def deliveries(js: JsClients) -> dict[str, list[Message]]:
    """The publisher's messages each client got, in arrival order."""
    got: dict[str, list[Message]] = {}
    for m in js.messages:
        if (
            m.get("type") == "event"
            and m.get("event") == EVENT
            and m["args"][0]["from"] == PUBLISHER
        ):
            got.setdefault(m["client"], []).append(m)
    return got


def stream_id(offset: Any) -> tuple[int, int] | None:
    if not isinstance(offset, str) or "-" not in offset:
        return None
    ms, _, seq = offset.partition("-")
    return (int(ms), int(seq)) if ms.isdigit() and seq.isdigit() else None


def tally(
    js: JsClients, rooms: dict[str, list[str]], sent: list[tuple[int, str, str]], recovery: bool
) -> Outcome:
    acked = acked_texts(js, sent)
    got = deliveries(js)
    expected = received = lost = duplicates = out_of_order = 0
    copies: list[list[Message]] = []
    for name, its_rooms in rooms.items():
        texts = [m["args"][0]["text"] for m in got.get(name, [])]
        counts = Counter(texts)
        duplicates += sum(n - 1 for n in counts.values())
        for text in (t for t, n in counts.items() if n > 1):
            copies.append([m for m in got[name] if m["args"][0]["text"] == text])
        for room in its_rooms:
            due = acked.get(room, [])
            expected += len(due)
            have = sum(1 for text in due if counts[text])
            received += have
            lost += len(due) - have
        offsets = [stream_id(m["args"][-1]) for m in got.get(name, []) if len(m["args"]) > 1]
        out_of_order += sum(1 for a, b in itertools.pairwise(offsets) if a and b and b <= a)
    reconnects, not_recovered, left = reconnect_times(js, rooms)
    return Outcome(
        recovery=recovery, replace_all_s=0.0, reconnects_s=reconnects, sent=len(sent),
        acked=sum(len(t) for t in acked.values()), expected=expected, received=received,
        lost=lost, duplicates=duplicates, out_of_order=out_of_order,
        left_disconnected=left, not_recovered=not_recovered, not_acked=refusals(js, sent),
        duplicate_copies=copies,
    )  # fmt: skip


def reconnect_times(
    js: JsClients, rooms: dict[str, list[str]]
) -> tuple[list[float], int, list[str]]:
    """(disconnect -> next connect times, reconnects not recovered, clients whose last
    word was a disconnect)."""
    down_at: dict[str, float] = {}
    connected: dict[str, bool] = {}
    times: list[float] = []
    not_recovered = 0
    for m in js.messages:
        kind, name = m.get("type"), str(m.get("client"))
        if kind == "disconnect":
            down_at[name] = m["t"]
            connected[name] = False
        elif kind == "connect":
            if name in down_at:
                times.append(m["t"] - down_at.pop(name))
                not_recovered += 0 if m.get("recovered") else 1
            connected[name] = True
    return times, not_recovered, sorted(n for n in rooms if not connected.get(n))


async def wait_delivered(
    js: JsClients, rooms: dict[str, list[str]], sent: list[tuple[int, str, str]]
) -> None:
    """Until every ack is in and every client has every acked message of its rooms, or
    SETTLE_SECONDS: what is missing then is lost."""
    deadline = time.monotonic() + SETTLE_SECONDS
    while time.monotonic() < deadline:
        acks = sum(1 for m in js.messages if m.get("type") == "ack")
        joins = sum(len(r) for r in rooms.values())
        if acks >= joins + len(sent):
            outcome = tally(js, rooms, sent, recovery=True)
            if outcome.lost == 0 and not outcome.left_disconnected:
                return
        await asyncio.sleep(0.2)


def autoscaler_status(state_dir: Path) -> dict[str, Any]:
    """The fleet's autoscaler's /status JSON."""
    state = FleetState.load(state_dir)
    assert state is not None and state.autoscaler is not None, "no autoscaler recorded"
    with urllib.request.urlopen(f"{state.autoscaler.status_url}status", timeout=5) as response:
        body: dict[str, Any] = json.loads(response.read())
        return body


async def autoscaler_settled(state_dir: Path, connections: int, within: float) -> dict[str, Any]:
    """Until the autoscaler, having decided on at least `connections`, runs as many
    servers as it wants (none starting, draining or held): its status then."""
    deadline = time.monotonic() + within
    while True:
        status = await asyncio.to_thread(autoscaler_status, state_dir)
        state = FleetState.load(state_dir)
        serving = [s for s in state.servers if not s.spare] if state else []
        in_flight = {"started", "drain_started", "promoted"}
        last = {e["node"]: e["kind"] for e in status["fleet_events"]}
        quiet = not in_flight & set(last.values()) and status["hold"] is None
        timeline = status["timeline"]
        seen = bool(timeline) and timeline[-1]["connections"] >= connections
        if seen and quiet and status["current"] == status["desired"] == len(serving):
            return status
        if time.monotonic() > deadline:
            raise TimeoutError(f"the autoscaler did not settle within {within:g}s: {status}")
        await asyncio.sleep(0.5)


def while_held(status: dict[str, Any], before: dict[str, Any]) -> AutoscalerOutcome:
    """What the autoscaler did between the restart's `held` and `resumed` events."""
    events = status["fleet_events"]
    holds = [e for e in events if e["kind"] == "held"]
    resumed = [e for e in events if e["kind"] == "resumed"]
    start = holds[0]["at"] if holds else float("inf")
    end = resumed[-1]["at"] if resumed else float("inf")
    moves = {"started", "spare_started", "promoted", "drain_started"}
    return AutoscalerOutcome(
        desired_before=before["desired"],
        desired_after=status["desired"],
        current_after=status["current"],
        servers_after=0,
        acted_while_held=[e for e in events if start <= e["at"] <= end and e["kind"] in moves],
        current_while_held=[p["current"] for p in status["timeline"] if start < p["at"] < end],
        holds=len(holds),
    )


async def rolling_deploy(
    work_dir: Path, *, recovery: bool, load: Load = Load(), autoscale: Autoscale | None = None
) -> Outcome:
    """One run (see the module): start the fleet, load it, restart it, tally, stop it."""
    env = {**fleet_env(load), **(autoscale.env() if autoscale else {})}
    state_dir = work_dir / ("recovery-on" if recovery else "recovery-off")
    up_args = tuple(autoscale.up_args()) if autoscale else ()
    autoscaled: AutoscalerOutcome | None = None
    before: dict[str, Any] = {}
    with local_fleet(state_dir, env, recovery, up_args=up_args) as state:
        secret = load_secrets(state_dir)["IOFLEET_JWT_SECRET"]
        js = await JsClients().start()
        stop = asyncio.Event()
        try:
            rooms = await open_clients(js, state.url, secret, load)
            if autoscale:
                before = await autoscaler_settled(state_dir, len(rooms), within=60)
            rejoiner = asyncio.create_task(rejoin_new_sessions(js, rooms, stop))
            publisher = asyncio.create_task(publish(js, load, stop))
            await asyncio.sleep(1.0)  # traffic before the first replacement
            began = time.monotonic()
            restart = await asyncio.to_thread(
                iofleet, "restart", "--state-dir", str(state_dir), env=env
            )
            replace_all = time.monotonic() - began
            await asyncio.sleep(TAIL_SECONDS)
            stop.set()
            sent = await publisher
            await wait_delivered(js, rooms, sent)
            await rejoiner
            outcome = tally(js, rooms, sent, recovery)
            if autoscale:
                after = await autoscaler_settled(state_dir, len(rooms), within=60)
                fleet = FleetState.load(state_dir)
                serving = len([s for s in fleet.servers if not s.spare]) if fleet else 0
                autoscaled = dataclasses.replace(while_held(after, before), servers_after=serving)
        finally:
            stop.set()
            await js.stop()
    outcome.autoscaler = autoscaled
    outcome.replace_all_s = replace_all
    outcome.restart_output = restart.stdout + restart.stderr
    if restart.returncode != 0:
        outcome.problems.append(f"iofleet restart exited {restart.returncode}")
    return outcome


def row(outcome: Outcome) -> list[str]:
    return [
        "on" if outcome.recovery else "off",
        f"{outcome.replace_all_s:.1f}",
        f"{outcome.percentile(0.5):.2f}",
        f"{outcome.percentile(0.95):.2f}",
        str(len(outcome.reconnects_s)),
        f"{outcome.acked}/{outcome.sent}",
        str(outcome.lost),
        str(outcome.duplicates),
        f"{100 * outcome.delivery_ratio:.2f}%",
        str(len(outcome.left_disconnected)),
        str(outcome.out_of_order),
    ]


COLUMNS = (
    "recovery", "replace all (s)", "reconnect p50 (s)", "p95 (s)", "reconnects",
    "acked/sent", "lost", "duplicates", "delivery", "left disconnected", "out of order",
)  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--recovery", choices=("both", "on", "off"), default="both")
    parser.add_argument("--clients", type=int, default=Load.clients)
    parser.add_argument("--rate", type=float, default=Load.rate)
    parser.add_argument("--drain-delay", type=float, default=Load.drain_delay)
    parser.add_argument("--drain-seconds", type=float, default=Load.drain_seconds)
    parser.add_argument(
        "--autoscaler", action="store_true", help="make up's fleet: the local autoscaler on"
    )
    args = parser.parse_args()
    autoscale = Autoscale() if args.autoscaler else None
    load = Load(args.clients, Load.rooms, args.rate, args.drain_delay, args.drain_seconds)
    modes = {"both": (True, False), "on": (True,), "off": (False,)}[args.recovery]
    console = Console(width=150)
    table = Table(
        title=f"rolling deploy: 3 servers, {load.clients} JS clients, {load.rate:g} msg/s"
    )
    for column in COLUMNS:
        table.add_column(column)
    results: dict[bool, list[Outcome]] = {mode: [] for mode in modes}
    with tempfile.TemporaryDirectory(prefix="iofleet-deploy-") as work:
        for run in range(args.runs):
            for mode in modes:
                outcome = asyncio.run(
                    rolling_deploy(
                        Path(work) / f"run{run}", recovery=mode, load=load, autoscale=autoscale
                    )
                )
                results[mode].append(outcome)
                table.add_row(*row(outcome))
                console.print(f"run {run + 1}, recovery {'on' if mode else 'off'}: {row(outcome)}")
                if outcome.autoscaler is not None:
                    console.print(f"  autoscaler: {outcome.autoscaler}")
    console.print(table)
    for mode, outcomes in results.items():
        median = statistics.median
        console.print(
            f"recovery {'on ' if mode else 'off'} medians of {len(outcomes)}: "
            f"replace all {median(o.replace_all_s for o in outcomes):.1f} s, "
            f"reconnect p50 {median(o.percentile(0.5) for o in outcomes):.2f} s "
            f"p95 {median(o.percentile(0.95) for o in outcomes):.2f} s, "
            f"lost {median(o.lost for o in outcomes):g}, "
            f"duplicates {median(o.duplicates for o in outcomes):g}, "
            f"delivery {100 * median(o.delivery_ratio for o in outcomes):.2f}%, "
            f"left disconnected {median(len(o.left_disconnected) for o in outcomes):g}"
        )


if __name__ == "__main__":
    main()
