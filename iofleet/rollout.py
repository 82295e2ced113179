"""Staged regional rollout: waves of Pulumi stacks, each gated on the region's health.

For every stack of a wave (the stacks of one wave run side by side):
preview -> up -> health gate, and the next wave starts only when every stack of
this one passed. The first failure stops the rollout with a report of what
happened and what to do next.

Pulumi is reached through `StackOps`, a narrow protocol: `PulumiStacks` implements
it with the Automation API (which drives the Pulumi CLI; the CLI cannot run on the
machine this bundle is developed on), and `StandInStacks` implements it in memory
for tests. The health gate reads a `HealthSource`: `HttpHealth` asks the region's
public endpoint (a handshake through the balancer) and every pod's admin port
(`/readyz`, `/metrics`).
"""

from __future__ import annotations

import asyncio
import importlib
import shutil
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol

import aiohttp
from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError

from iofleet.loadtest.capacity import parse_metric
from server.contract import CONNECTIONS_METRIC


class RolloutError(ValueError):
    """A rollout file that cannot be used; the message names the file and field."""


# --- configuration ---------------------------------------------------------------------


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Gate(_Model):
    recover_share: float = Field(0.9, gt=0, le=1.5)
    """Connections must come back to this share of the level before the stack's up."""
    deadline_seconds: float = Field(600, gt=0)
    poll_seconds: float = Field(10, gt=0)
    max_errors_per_second: float = Field(1.0, ge=0)
    """Refused connections + fan-out publish failures, all pods, per second."""
    max_loop_lag_ms: float = Field(50, gt=0)


class StackTarget(_Model):
    admin_urls: list[str] = Field(default_factory=list)
    """Pods' admin base URLs (the admin port is never behind the public balancer)."""
    admin_dns: str | None = Field(None, pattern=r"^[A-Za-z0-9.-]+:\d{1,5}$")
    """HOST:PORT whose addresses are every pod, resolved at each sample (the headless
    Service, e.g. iofleet-server-headless.iofleet.svc.cluster.local:9000, when the
    rollout runs inside the cluster's network): pods replaced by the update are found."""
    public_url: str | None = None
    """Defaults to the stack outputs `public_scheme://public_hostname`."""


class Wave(_Model):
    name: str
    stacks: list[str] = Field(min_length=1)


class RolloutConfig(_Model):
    waves: list[Wave] = Field(min_length=1)
    gate: Gate = Field(default_factory=Gate)
    stacks: dict[str, StackTarget] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _each_stack_once(self) -> RolloutConfig:
        seen: set[str] = set()
        for wave in self.waves:
            for stack in wave.stacks:
                if stack in seen:
                    raise ValueError(f"stack {stack!r} is in more than one wave")
                seen.add(stack)
        return self


def load_rollout(path: Path) -> RolloutConfig:
    try:
        raw = YAML(typ="safe").load(path.read_text())
        return RolloutConfig.model_validate(raw)
    except (OSError, YAMLError) as error:
        raise RolloutError(f"{path}: {error}") from None
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise RolloutError(f"{path}: {where}: {first['msg']}") from None


# --- Pulumi, behind a narrow protocol ------------------------------------------------


@dataclass(frozen=True)
class Preview:
    changes: dict[str, int]
    """Resource operations by kind (create, update, delete, same, ...)."""


@dataclass(frozen=True)
class Up:
    result: str
    outputs: dict[str, Any]


class StackOpsError(RuntimeError):
    """A preview or update that failed; the message is Pulumi's."""


class StackOps(Protocol):
    def preview(self, stack: str, on_output: Callable[[str], None]) -> Preview: ...

    def up(self, stack: str, on_output: Callable[[str], None]) -> Up: ...

    def outputs(self, stack: str) -> dict[str, Any]: ...


class PulumiStacks:
    """StackOps over the Pulumi Automation API (a local program: `Pulumi.yaml` in work_dir).

    Needs the Pulumi CLI on PATH and a logged-in backend; not exercised in this
    repository's tests, which use `StandInStacks`.
    """

    def __init__(self, work_dir: Path) -> None:
        self.work_dir = work_dir
        # Pulumi is the `infra` extra: only a real rollout needs it, so it is loaded here
        # rather than when the `iofleet` command starts.
        try:
            self.automation: Any = importlib.import_module("pulumi.automation")
        except ImportError:
            raise StackOpsError("the pulumi package is missing: pip install '.[infra]'") from None
        if shutil.which("pulumi") is None:
            raise StackOpsError(
                "the Pulumi CLI is not on PATH (the Automation API drives it): "
                "install it from https://www.pulumi.com/docs/install/"
            )

    def _stack(self, name: str) -> Any:
        try:
            return self.automation.select_stack(stack_name=name, work_dir=str(self.work_dir))
        except self.automation.CommandError as error:
            raise StackOpsError(str(error)) from None

    def preview(self, stack: str, on_output: Callable[[str], None]) -> Preview:
        try:
            result = self._stack(stack).preview(on_output=on_output)
        except self.automation.CommandError as error:
            raise StackOpsError(str(error)) from None
        changes = {str(getattr(k, "value", k)): int(v) for k, v in result.change_summary.items()}
        return Preview(changes=changes)

    def up(self, stack: str, on_output: Callable[[str], None]) -> Up:
        try:
            result = self._stack(stack).up(on_output=on_output)
        except self.automation.CommandError as error:
            raise StackOpsError(str(error)) from None
        outputs = {k: v.value for k, v in result.outputs.items() if not v.secret}
        return Up(result=str(result.summary.result), outputs=outputs)

    def outputs(self, stack: str) -> dict[str, Any]:
        try:
            outputs = self._stack(stack).outputs()
        except self.automation.CommandError as error:
            raise StackOpsError(str(error)) from None
        return {k: v.value for k, v in outputs.items() if not v.secret}


@dataclass
class StandInStacks:
    """StackOps in memory, for tests: records calls, fails where told to."""

    fail_preview: set[str] = field(default_factory=set)
    fail_up: set[str] = field(default_factory=set)
    stack_outputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    calls: list[tuple[str, str]] = field(default_factory=list)
    on_up: Callable[[str], None] | None = None
    """Runs during `up` (a test changes the region's health here)."""

    def preview(self, stack: str, on_output: Callable[[str], None]) -> Preview:
        self.calls.append(("preview", stack))
        on_output(f"previewing {stack}")
        if stack in self.fail_preview:
            raise StackOpsError(f"preview of {stack} failed (stand-in)")
        return Preview(changes={"update": 1, "same": 40})

    def up(self, stack: str, on_output: Callable[[str], None]) -> Up:
        self.calls.append(("up", stack))
        on_output(f"updating {stack}")
        if stack in self.fail_up:
            raise StackOpsError(f"update of {stack} failed (stand-in)")
        if self.on_up is not None:
            self.on_up(stack)
        return Up(result="succeeded", outputs=self.outputs(stack))

    def outputs(self, stack: str) -> dict[str, Any]:
        return dict(self.stack_outputs.get(stack, {}))


# --- health ------------------------------------------------------------------------------


@dataclass(frozen=True)
class PodHealth:
    url: str
    ready: bool
    connections: float = 0.0
    loop_lag_s: float = 0.0
    errors_total: float = 0.0


@dataclass(frozen=True)
class RegionHealth:
    public_ok: bool
    pods: tuple[PodHealth, ...]
    at: float

    @property
    def connections(self) -> float:
        return sum(p.connections for p in self.pods)

    @property
    def errors_total(self) -> float:
        return sum(p.errors_total for p in self.pods)


class HealthSource(Protocol):
    async def sample(
        self, stack: str, target: StackTarget, outputs: Mapping[str, Any]
    ) -> RegionHealth: ...


ERROR_METRICS = ("iofleet_connections_rejected_total", "iofleet_fanout_publish_failures_total")


class HttpHealth:
    """Asks the public endpoint and every pod's admin port over HTTP."""

    def __init__(self, timeout: float = 5.0) -> None:
        self.timeout = aiohttp.ClientTimeout(total=timeout)

    async def sample(
        self, stack: str, target: StackTarget, outputs: Mapping[str, Any]
    ) -> RegionHealth:
        async with aiohttp.ClientSession(timeout=self.timeout) as session:
            public = target.public_url or _public_url(outputs)
            public_ok = public is not None and await _handshake_ok(session, public)
            urls = [*target.admin_urls, *await _resolve(target.admin_dns)]
            pods = await asyncio.gather(*(_pod(session, url) for url in urls))
        return RegionHealth(public_ok=public_ok, pods=tuple(pods), at=time.monotonic())


async def _resolve(admin_dns: str | None) -> list[str]:
    if not admin_dns:
        return []
    host, port = admin_dns.rsplit(":", 1)
    try:
        infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), proto=6)
    except OSError:
        return []  # no pods found: the gate reports "no pods to check"
    addresses = sorted({str(info[4][0]) for info in infos})
    return [f"http://{a}:{port}" if ":" not in a else f"http://[{a}]:{port}" for a in addresses]


def _public_url(outputs: Mapping[str, Any]) -> str | None:
    host = outputs.get("public_hostname")
    return f"{outputs.get('public_scheme', 'https')}://{host}" if host else None


async def _handshake_ok(session: aiohttp.ClientSession, base: str) -> bool:
    """An Engine.IO polling handshake through the balancer answers 200 with an open packet
    (the server refuses it with 401 without a token, which also proves it is reachable)."""
    try:
        url = f"{base.rstrip('/')}/socket.io/?EIO=4&transport=polling"
        async with session.get(url) as response:
            return response.status in (200, 401)
    except (aiohttp.ClientError, OSError, TimeoutError):
        return False


async def _pod(session: aiohttp.ClientSession, base: str) -> PodHealth:
    base = base.rstrip("/")
    try:
        async with session.get(f"{base}/readyz") as response:
            ready = response.status == 200
        async with session.get(f"{base}/metrics") as response:
            text = await response.text()
    except (aiohttp.ClientError, OSError, TimeoutError):
        return PodHealth(url=base, ready=False)
    errors = 0.0
    for line in text.splitlines():
        if line.startswith(ERROR_METRICS):
            try:
                errors += float(line.rsplit(" ", 1)[1])
            except ValueError:
                continue
    return PodHealth(
        url=base,
        ready=ready,
        connections=parse_metric(text, CONNECTIONS_METRIC) or 0.0,
        loop_lag_s=parse_metric(text, "iofleet_event_loop_lag_seconds") or 0.0,
        errors_total=errors,
    )


def gate_failures(
    gate: Gate, baseline: RegionHealth, before: RegionHealth | None, now: RegionHealth
) -> list[str]:
    """Why `now` does not pass the gate (empty: it passes). Pure."""
    reasons = []
    if not now.public_ok:
        reasons.append("public endpoint does not answer a handshake")
    if not now.pods:
        reasons.append("no pods to check (set admin_urls)")
    unready = [p.url for p in now.pods if not p.ready]
    if unready:
        reasons.append(f"{len(unready)} pod(s) not ready: {', '.join(unready[:3])}")
    floor = baseline.connections * gate.recover_share
    if now.connections < floor:
        reasons.append(
            f"connections {now.connections:.0f} < {gate.recover_share:.0%} of "
            f"{baseline.connections:.0f} before the update"
        )
    lag_ms = max((p.loop_lag_s for p in now.pods), default=0.0) * 1000
    if lag_ms > gate.max_loop_lag_ms:
        reasons.append(f"event-loop lag {lag_ms:.1f} ms > {gate.max_loop_lag_ms} ms")
    if before is not None and now.at > before.at:
        rate = max(0.0, now.errors_total - before.errors_total) / (now.at - before.at)
        if rate > gate.max_errors_per_second:
            reasons.append(f"errors {rate:.2f}/s > {gate.max_errors_per_second}/s")
    return reasons


# --- the orchestration ------------------------------------------------------------------

Status = Literal["waiting", "preview", "up", "gate", "passed", "failed", "skipped"]


@dataclass
class StackReport:
    stack: str
    wave: str
    status: Status = "waiting"
    changes: dict[str, int] = field(default_factory=dict)
    detail: str = ""
    gate_reasons: list[str] = field(default_factory=list)
    seconds: float = 0.0


@dataclass
class RolloutReport:
    stacks: list[StackReport]
    ok: bool = True
    stopped_at: str | None = None
    next_steps: list[str] = field(default_factory=list)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


Sleep = Callable[[float], Awaitable[None]]


def check_from_wave(config: RolloutConfig, from_wave: str | None) -> None:
    """RolloutError unless `from_wave` (when given) names one of the config's waves."""
    names = [w.name for w in config.waves]
    if from_wave is not None and from_wave not in names:
        raise RolloutError(f"--from-wave {from_wave!r} is not one of {', '.join(names)}")


class Rollout:
    def __init__(
        self,
        config: RolloutConfig,
        stacks: StackOps,
        health: HealthSource,
        on_change: Callable[[RolloutReport], None] = lambda report: None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.config = config
        self.stacks = stacks
        self.health = health
        self.on_change = on_change
        self.sleep = sleep
        self.clock = clock
        self.report = RolloutReport(
            stacks=[StackReport(s, w.name) for w in config.waves for s in w.stacks]
        )

    def _entry(self, stack: str) -> StackReport:
        return next(r for r in self.report.stacks if r.stack == stack)

    def _set(self, stack: str, status: Status, detail: str = "") -> None:
        entry = self._entry(stack)
        entry.status = status
        if detail:
            entry.detail = detail
        self.on_change(self.report)

    async def run(self, from_wave: str | None = None) -> RolloutReport:
        check_from_wave(self.config, from_wave)
        started = from_wave is None
        for wave in self.config.waves:
            started = started or wave.name == from_wave
            if not started:
                for stack in wave.stacks:
                    self._set(stack, "skipped", "before --from-wave")
                continue
            results = await asyncio.gather(*(self._roll(stack) for stack in wave.stacks))
            if not all(results):
                self._stop(wave)
                break
        return self.report

    def _stop(self, wave: Wave) -> None:
        failed = [r for r in self.report.stacks if r.status == "failed"]
        later = [r.stack for r in self.report.stacks if r.status == "waiting"]
        self.report.ok = False
        self.report.stopped_at = wave.name
        steps = [
            f"{r.stack}: {r.detail}" + (f" ({'; '.join(r.gate_reasons)})" if r.gate_reasons else "")
            for r in failed
        ]
        steps.append(f"not started: {', '.join(later) or 'none'} (left as they were)")
        steps.append(
            "look at the failed stack: `pulumi stack history -s STACK`, its pods' logs and "
            "/admin/status; fix the change, or roll the stack back by running `pulumi up` "
            "from the previous commit"
        )
        steps.append(f"then resume with `iofleet rollout --from-wave {wave.name}`")
        self.report.next_steps = steps
        self.on_change(self.report)

    async def _roll(self, stack: str) -> bool:
        entry = self._entry(stack)
        begin = self.clock()
        target = self.config.stacks.get(stack, StackTarget())
        log: list[str] = []
        try:
            outputs = await asyncio.to_thread(self.stacks.outputs, stack)
            baseline = await self.health.sample(stack, target, outputs)
            self._set(stack, "preview")
            preview = await asyncio.to_thread(self.stacks.preview, stack, log.append)
            entry.changes = preview.changes
            self._set(stack, "up")
            up = await asyncio.to_thread(self.stacks.up, stack, log.append)
            outputs = up.outputs or outputs
        except StackOpsError as error:
            step = entry.status
            entry.seconds = round(self.clock() - begin, 1)
            self._set(stack, "failed", f"{step} failed: {str(error).strip().splitlines()[-1]}")
            return False
        self._set(stack, "gate")
        passed, reasons = await self._gate(stack, target, outputs, baseline)
        entry.seconds = round(self.clock() - begin, 1)
        entry.gate_reasons = reasons
        if passed:
            self._set(stack, "passed", "healthy")
            return True
        self._set(stack, "failed", "health gate failed at the deadline")
        return False

    async def _gate(
        self, stack: str, target: StackTarget, outputs: Mapping[str, Any], baseline: RegionHealth
    ) -> tuple[bool, list[str]]:
        gate = self.config.gate
        deadline = self.clock() + gate.deadline_seconds
        before: RegionHealth | None = None
        reasons: list[str] = []
        while True:
            now = await self.health.sample(stack, target, outputs)
            reasons = gate_failures(gate, baseline, before, now)
            if not reasons and before is not None:  # two samples: an error rate is known
                return True, []
            self._entry(stack).gate_reasons = reasons
            self.on_change(self.report)
            if self.clock() >= deadline:
                return False, reasons
            before = now
            await self.sleep(gate.poll_seconds)


def plan_lines(config: RolloutConfig) -> list[str]:
    """What `--plan` prints: the waves in order, without acting."""
    lines = []
    for index, wave in enumerate(config.waves, 1):
        lines.append(f"wave {index} ({wave.name}): {', '.join(wave.stacks)}")
    gate = config.gate
    lines.append(
        f"gate per stack: every pod ready, public handshake, connections >= "
        f"{gate.recover_share:.0%} of before within {gate.deadline_seconds:g} s, errors <= "
        f"{gate.max_errors_per_second}/s, loop lag <= {gate.max_loop_lag_ms} ms"
    )
    return lines


def run_rollout(rollout: Rollout, from_wave: str | None = None) -> RolloutReport:
    return asyncio.run(rollout.run(from_wave))
