"""Load-test scenarios: YAML in the shape of Artillery's, validated with pydantic.

```yaml
config:
  target: http://127.0.0.1:8080        # --target overrides
  phases:                              # run one after another
    - {name: warm up, duration: 10, arrivalRate: 5, rampTo: 50}
    - {name: hold, duration: 30, arrivalRate: 50, maxVusers: 2000}
  variables:                           # one value picked per virtual user
    room: [lobby, games, music]
scenarios:
  - name: chatter
    weight: 3
    flow:
      - connect: {auth: signed}        # signed (IOFLEET_JWT_SECRET) | guest | none | token
      - join: "{{ room }}"             # room:join with ack
      - loop:
          - emit: {channel: "chat:message", data: {room: "{{ room }}", text: "hi {{ $mark }}"},
                   acknowledge: true}
          - think: 1
        count: 20
```

Templates: `{{ name }}` from `config.variables` or `vu` (the virtual user's number);
`{{ $randomNumber(a, b) }}`, `{{ $randomString(n) }}`; `{{ $mark }}` stamps a message
so every receiver measures its delivery latency and notices gaps (lost messages).
"""

from __future__ import annotations

import random
import re
import string
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator
from ruamel.yaml import YAML
from ruamel.yaml.error import YAMLError


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the field."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", populate_by_name=True)


class Phase(_Model):
    name: str = ""
    duration: float = Field(gt=0, le=3600)
    arrival_rate: float = Field(0, ge=0, alias="arrivalRate")
    ramp_to: float | None = Field(None, ge=0, alias="rampTo")
    max_vusers: int | None = Field(None, ge=1, alias="maxVusers")

    def rate_at(self, t: float) -> float:
        """New virtual users per second, `t` seconds into the phase (linear ramp)."""
        if self.ramp_to is None:
            return self.arrival_rate
        return self.arrival_rate + (self.ramp_to - self.arrival_rate) * min(1.0, t / self.duration)


class Slo(_Model):
    """Service-level objective `--find-capacity` ramps against (the seeds' defaults)."""

    connect_ms: float = Field(100, gt=0, description="connect time p99")
    message_p99_ms: float = Field(50, gt=0, description="message latency p99")
    loop_lag_ms: float = Field(10, gt=0, description="server event-loop lag (max sample)")
    error_ratio: float = Field(0.01, ge=0, le=1, description="errors per attempt")


class Config(_Model):
    target: str | None = None
    phases: list[Phase] = Field(min_length=1)
    variables: dict[str, list[Any]] = Field(default_factory=dict)
    ack_timeout: float = Field(10, gt=0, alias="ackTimeout")
    connect_timeout: float = Field(10, gt=0, alias="connectTimeout")
    slo: Slo = Field(default_factory=Slo)


class Connect(_Model):
    auth: Literal["signed", "guest", "none", "token"] = "signed"
    token: str | None = None
    transport: Literal["websocket"] = "websocket"

    @model_validator(mode="after")
    def _token_given(self) -> Connect:
        if self.auth == "token" and not self.token:
            raise ValueError("auth: token needs a token")
        return self


class Emit(_Model):
    channel: str = Field(min_length=1)
    data: Any = None
    acknowledge: bool = False


class Step(_Model):
    """One flow step: exactly one of the action keys (with `count` only for `loop`)."""

    connect: Connect | None = None
    disconnect: bool | None = None
    emit: Emit | None = None
    join: str | None = None
    think: float | None = Field(None, ge=0, le=3600)
    loop: list[Step] | None = None
    count: int | None = Field(None, ge=1, le=1_000_000)

    @model_validator(mode="before")
    @classmethod
    def _bare_connect(cls, data: Any) -> Any:
        # `- connect` or `- connect: {}` both mean "connect with the defaults".
        if data == "connect":
            return {"connect": {}}
        if data == "disconnect":
            return {"disconnect": True}
        if isinstance(data, dict) and "connect" in data and data["connect"] is None:
            return {**data, "connect": {}}
        return data

    @model_validator(mode="after")
    def _one_action(self) -> Step:
        actions = [
            k
            for k in ("connect", "disconnect", "emit", "join", "think", "loop")
            if getattr(self, k)
        ]
        if self.think == 0:
            actions.append("think")
        if len(actions) != 1:
            raise ValueError(
                "a step needs exactly one of connect, disconnect, emit, join, think, loop"
            )
        if self.count is not None and self.loop is None:
            raise ValueError("count belongs to a loop step")
        return self


class Flow(_Model):
    name: str = "flow"
    weight: float = Field(1, gt=0)
    flow: list[Step] = Field(min_length=1)


class Scenario(_Model):
    config: Config
    scenarios: list[Flow] = Field(min_length=1)

    def pick(self, rng: random.Random) -> Flow:
        return rng.choices(self.scenarios, weights=[f.weight for f in self.scenarios])[0]

    @property
    def duration(self) -> float:
        return sum(p.duration for p in self.config.phases)

    def auth_modes(self) -> set[str]:
        """Every `connect.auth` a virtual user may use, including the default one of the
        connect an `emit` or `join` makes when its user is not connected (the engine's
        rule): what a run needs is known before the first connect."""
        modes: set[str] = set()

        def walk(steps: list[Step], connected: bool) -> bool:
            for step in steps:
                if step.connect is not None:
                    modes.add(step.connect.auth)
                    connected = True
                elif step.disconnect:
                    connected = False
                elif (step.emit is not None or step.join is not None) and not connected:
                    modes.add(Connect().auth)
                    connected = True
                elif step.loop is not None:
                    # Twice: the second round starts in the state the first one left.
                    connected = walk(step.loop, walk(step.loop, connected))
            return connected

        for flow in self.scenarios:
            walk(flow.flow, connected=False)
        return modes


def load_scenario(path: Path) -> Scenario:
    try:
        raw = YAML(typ="safe").load(path.read_text())
    except (OSError, YAMLError) as error:
        raise ScenarioError(f"{path}: {error}") from None
    try:
        return Scenario.model_validate(raw)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise ScenarioError(f"{path}: {where}: {first['msg']}") from None


# --- templates -----------------------------------------------------------------------

_TEMPLATE = re.compile(r"\{\{\s*([^}]+?)\s*\}\}")
_CALL = re.compile(r"^\$(\w+)\((.*)\)$")


class Templater:
    """Fills `{{ ... }}` in one virtual user's payloads."""

    def __init__(self, values: dict[str, Any], rng: random.Random, mark: Any) -> None:
        self.values = values
        self.rng = rng
        self.mark = mark  # a callable giving the next `$mark` stamp

    def fill(self, value: Any) -> Any:
        if isinstance(value, str):
            if "{{" not in value:
                return value
            whole = _TEMPLATE.fullmatch(value)
            if whole:  # a lone template keeps the value's type (numbers stay numbers)
                return self._value(whole.group(1))
            return _TEMPLATE.sub(lambda m: str(self._value(m.group(1))), value)
        if isinstance(value, dict):
            return {k: self.fill(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.fill(v) for v in value]
        return value

    def _value(self, expression: str) -> Any:
        if expression == "$mark":
            return self.mark()
        call = _CALL.match(expression)
        if call:
            name, args = call.group(1), [a.strip() for a in call.group(2).split(",") if a.strip()]
            if name == "randomNumber" and len(args) == 2:
                return self.rng.randint(int(args[0]), int(args[1]))
            if name == "randomString":
                size = int(args[0]) if args else 8
                return "".join(self.rng.choices(string.ascii_lowercase, k=size))
            raise ScenarioError(f"unknown template function {expression!r}")
        if expression in self.values:
            return self.values[expression]
        raise ScenarioError(f"unknown template variable {expression!r}")


def vu_values(config: Config, vu: int, rng: random.Random) -> dict[str, Any]:
    values: dict[str, Any] = {"vu": vu}
    for name, choices in config.variables.items():
        values[name] = rng.choice(choices) if choices else ""
    return values
