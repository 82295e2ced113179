"""Pure parts, tested with tables of cases and a fake clock."""

from __future__ import annotations

import asyncio
import json
import logging
import random
import sys
import time

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from server.core.jsonlog import JsonFormatter, OncePerBurst
from server.core.ratelimit import KeyedBuckets, TokenBucket
from server.node.drain import DrainController
from server.node.drain_plan import plan_batches
from server.settings import Settings, SettingsError, load_settings
from server.sio.auth import AuthError, TokenVerifier, token_from_handshake
from tests.support.procs import run_module

LONG = "k" * 32  # an HS256 secret of the minimum length


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.now += max(0.0, seconds)
        await asyncio.sleep(0)


# --- settings ------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        (
            {"IOFLEET_PORT": "eighty"},
            "invalid setting IOFLEET_PORT: Input should be a valid integer",
        ),
        ({"IOFLEET_PORT": "70000"}, "invalid setting IOFLEET_PORT: Input should be less than"),
        (
            {"IOFLEET_AUTH": "maybe"},
            "invalid setting IOFLEET_AUTH: Input should be 'jwt' or 'none'",
        ),
        ({"IOFLEET_TRANSPORTS": "smoke"}, "invalid setting IOFLEET_TRANSPORTS"),
        (
            {"IOFLEET_REDIS_URL": "http://x"},
            "invalid setting IOFLEET_REDIS_URL: 'http://x': scheme must be redis://",
        ),
        ({"IOFLEET_NODE_ID": "a b"}, "invalid setting IOFLEET_NODE_ID: must match"),
        ({"IOFLEET_CORS_ORIGINS": "example.com"}, "invalid setting IOFLEET_CORS_ORIGINS"),
        (
            {"IOFLEET_HANDLERS": "nocolon"},
            "invalid setting IOFLEET_HANDLERS: must be module:function",
        ),
        ({"IOFLEET_JWT_SECRET": ""}, "IOFLEET_AUTH=jwt needs IOFLEET_JWT_SECRET"),
        (
            {"IOFLEET_JWT_SECRET": "short"},
            "invalid setting IOFLEET_JWT_SECRET: must be at least 32",
        ),
        (
            {
                "IOFLEET_GUEST_TOKENS": "true",
                "IOFLEET_JWT_SECRET": "",
                "IOFLEET_JWT_PUBLIC_KEY": "k",
            },
            "IOFLEET_GUEST_TOKENS=true needs IOFLEET_JWT_SECRET",
        ),
        ({"IOFLEET_RECOVERY": "true"}, "IOFLEET_RECOVERY=true needs IOFLEET_REDIS_URL"),
        (
            {"IOFLEET_RECOVERY_WINDOW_SECONDS": "0"},
            "invalid setting IOFLEET_RECOVERY_WINDOW_SECONDS: Input should be greater than 0",
        ),
    ],
)
def test_bad_settings_name_the_variable(
    monkeypatch: pytest.MonkeyPatch, env: dict, message: str
) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", LONG)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(SettingsError) as caught:
        load_settings()
    assert message in str(caught.value)
    assert "\n" not in str(caught.value)


def test_recovery_is_allowed_on_a_redis_cluster(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", LONG)
    monkeypatch.setenv("IOFLEET_RECOVERY", "true")
    monkeypatch.setenv("IOFLEET_REDIS_URL", "redis+cluster://127.0.0.1:7000,127.0.0.1:7001")
    assert load_settings().recovery


def test_settings_defaults_and_lists(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", LONG)
    monkeypatch.setenv("IOFLEET_CORS_ORIGINS", "https://a.example, https://b.example")
    monkeypatch.setenv("IOFLEET_MAX_CONNECTIONS", "")  # empty means unset
    settings = Settings()
    assert settings.port == 8000 and settings.admin_port == 9000
    assert settings.transports == ["websocket", "polling"]
    assert settings.cors_allowed == ["https://a.example", "https://b.example"]
    assert settings.max_connections == 10000 and settings.max_message_bytes == 1_000_000
    assert settings.ping_interval == 25 and settings.ping_timeout == 20
    # Connection state recovery is opt-in, as Node's connectionStateRecovery; its
    # window is Node's default maxDisconnectionDuration.
    assert settings.recovery is False and settings.recovery_window_seconds == 120
    monkeypatch.setenv("IOFLEET_CORS_ORIGINS", "")
    assert Settings().cors_allowed is None  # same origin only, never a wildcard by default


def test_bad_setting_stops_the_process_with_one_line() -> None:
    env = {"PATH": "/usr/bin:/bin", "IOFLEET_JWT_SECRET": LONG, "IOFLEET_PING_TIMEOUT": "-1"}
    result = run_module("server", env=env, within=30)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "iofleet: invalid setting IOFLEET_PING_TIMEOUT: Input should be greater than 0 (got '-1')"
    ]


def test_secrets_are_not_echoed_in_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("IOFLEET_JWT_SECRET", LONG)
    monkeypatch.setenv("IOFLEET_ADMIN_TOKEN", "x" * 3)
    settings = Settings()
    assert "xxx" not in repr(settings) and "xxx" not in str(settings.model_dump())


# --- auth ----------------------------------------------------------------------


def verifier(**env: str) -> TokenVerifier:
    return TokenVerifier(Settings(**env))  # type: ignore[arg-type]


def test_rs256_tokens() -> None:
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    check = verifier(jwt_public_key=public_pem)
    token = jwt.encode({"sub": "rsa-user", "exp": time.time() + 60}, key, algorithm="RS256")
    assert check.verify(token).user == "rsa-user"
    hs = jwt.encode({"sub": "x", "exp": time.time() + 60}, LONG, algorithm="HS256")
    with pytest.raises(AuthError, match="algorithm 'HS256' not accepted"):
        check.verify(hs)


def test_audience_and_issuer_are_enforced() -> None:
    check = verifier(jwt_secret=LONG, jwt_audience="chat", jwt_issuer="idp")
    good = jwt.encode({"sub": "u", "exp": time.time() + 60, "aud": "chat", "iss": "idp"}, LONG)
    assert check.verify(good).user == "u"
    exp = time.time() + 60
    with pytest.raises(AuthError, match=r"^auth: Audience doesn't match$"):
        check.verify(jwt.encode({"sub": "u", "exp": exp, "aud": "other", "iss": "idp"}, LONG))
    with pytest.raises(AuthError, match=r"^auth: Invalid issuer$"):
        check.verify(jwt.encode({"sub": "u", "exp": exp, "aud": "chat", "iss": "evil"}, LONG))
    with pytest.raises(AuthError, match=r"^auth: token has no 'aud' claim$"):
        check.verify(jwt.encode({"sub": "u", "exp": exp, "iss": "idp"}, LONG))


def test_alg_none_is_refused() -> None:
    check = verifier(jwt_secret=LONG)
    unsigned = jwt.encode({"sub": "u", "exp": time.time() + 60}, None, algorithm="none")
    with pytest.raises(AuthError, match="not accepted"):
        check.verify(unsigned)


def test_token_sources() -> None:
    assert token_from_handshake({"token": "a"}, {"HTTP_AUTHORIZATION": "Bearer b"}) == "a"
    assert token_from_handshake(None, {"HTTP_AUTHORIZATION": "Bearer b"}) == "b"
    assert token_from_handshake({"token": 5}, {}) is None
    assert token_from_handshake("junk", {"HTTP_AUTHORIZATION": "Basic zz"}) is None


# --- rate limits -----------------------------------------------------------------


def test_token_bucket_refills_at_rate() -> None:
    clock = FakeClock()
    bucket = TokenBucket(rate=2, burst=4, clock=clock)
    assert [bucket.take() for _ in range(5)] == [True, True, True, True, False]
    clock.now += 0.5
    assert bucket.take() and not bucket.take()
    clock.now += 100
    assert sum(bucket.take() for _ in range(10)) == 4  # never above burst


def test_keyed_buckets_are_bounded() -> None:
    buckets = KeyedBuckets(rate=1, burst=1, max_keys=3, clock=FakeClock())
    for key in "abcde":
        buckets.take(key)
    assert len(buckets) == 3
    assert not buckets.take("e") and buckets.take("a")  # 'a' was forgotten: full again


# --- drain pacing -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("count", "window", "batches"),
    [(0, 30, 0), (1, 30, 1), (10, 30, 10), (1000, 30, 60), (7, 0, 1), (100, 1, 2)],
)
def test_plan_batches_cover_everyone_inside_the_window(
    count: int, window: float, batches: int
) -> None:
    plan = plan_batches(count, window, random.Random(7))
    assert len(plan) == batches
    assert sum(size for _, size in plan) == count
    offsets = [offset for offset, _ in plan]
    assert offsets == sorted(offsets)
    assert all(0 <= offset <= max(window, 0) for offset in offsets)
    if plan:
        sizes = [size for _, size in plan]
        assert max(sizes) - min(sizes) <= 1  # even batches


def test_plan_batches_are_jittered() -> None:
    a = plan_batches(100, 30, random.Random(1))
    b = plan_batches(100, 30, random.Random(2))
    assert [o for o, _ in a] != [o for o, _ in b]


class FakeServer:
    def __init__(self, count: int) -> None:
        self.connections: dict[str, object] = {f"s{i}": object() for i in range(count)}
        self.closed_at: list[float] = []
        self.clock: FakeClock | None = None

    async def close_connection(self, sid: str) -> bool:
        assert self.clock is not None
        self.closed_at.append(self.clock.now)
        return self.connections.pop(sid, None) is not None


async def test_drain_controller_follows_the_contract_on_a_fake_clock() -> None:
    clock = FakeClock()
    server = FakeServer(200)
    server.clock = clock
    states: list[bool] = []
    drain = DrainController(
        server,
        drain_delay=5,
        drain_seconds=30,
        on_state=states.append,
        sleep=clock.sleep,
        clock=clock,
        rng=random.Random(3),
    )
    start = clock.now
    assert not drain.draining
    assert drain.start("test") and drain.draining and states == [True]
    assert not drain.start("again")  # one drain at a time
    await asyncio.wait_for(drain.wait(), 5)
    assert server.connections == {} and drain.closed == 200
    relative = [t - start for t in server.closed_at]
    assert min(relative) >= 5  # nothing closes before the delay
    assert max(relative) <= 5 + 30  # all closed by the deadline
    assert max(relative) - min(relative) >= 25  # spread over the window
    # batches: at most 200/60 + 1 closes share an instant
    assert max(relative.count(t) for t in set(relative)) <= 4


# --- logs --------------------------------------------------------------------------


def test_log_lines_are_one_json_object() -> None:
    formatter = JsonFormatter("node-1")
    try:
        raise ValueError("boom\nsecond line")
    except ValueError:
        record = logging.LogRecord(
            "x", logging.ERROR, __file__, 1, "failed %s", ("op",), sys.exc_info()
        )
    record.event = "test.event"
    line = formatter.format(record)
    assert "\n" not in line
    entry = json.loads(line)
    assert (
        entry["node"] == "node-1" and entry["event"] == "test.event" and entry["msg"] == "failed op"
    )
    assert entry["error"].startswith("ValueError: boom")


def test_once_per_burst() -> None:
    gate = OncePerBurst(window=10)
    assert gate.should_log(0) and not gate.should_log(1) and not gate.should_log(9)
    assert gate.take_suppressed() == 2
    assert gate.should_log(10.5)


def test_the_server_collects_the_whole_heap_less_often() -> None:
    """`python -m server` keeps the young generations' thresholds and raises the
    full collection's (server/__main__.py says why)."""
    import gc

    from server.__main__ import GC_THRESHOLDS, tune_gc

    before = gc.get_threshold()
    try:
        tune_gc()
        assert gc.get_threshold() == GC_THRESHOLDS
        assert GC_THRESHOLDS[:2] == (700, 10) and GC_THRESHOLDS[2] > 10
    finally:
        gc.set_threshold(*before)


@pytest.mark.parametrize(
    "text",
    [
        '2["chat",{"a":1}]',
        '27["echo",[1,2,{"b":null}]]',
        '2123456789012345["e"]',
        '2["e","x",3.5,true]',
        '20["e"]',
    ],
)
def test_the_event_fast_path_reads_what_python_socketio_reads(text: str) -> None:
    from socketio import packet as sio_packet

    from server.sio.server import decode_plain_event

    reference = sio_packet.Packet(encoded_packet=text)
    assert decode_plain_event(text) == (reference.id, reference.data)


@pytest.mark.parametrize(
    "text",
    ['2/chat,["e"]', '2/chat,3["e"]', "2", '21234567890123456789["e"]', '2{"not":"a list"}'],
)
def test_other_event_shapes_take_python_socketios_path(text: str) -> None:
    from server.sio.server import decode_plain_event

    assert decode_plain_event(text) is None


def test_bad_json_in_an_event_is_a_value_error() -> None:
    from server.sio.server import decode_plain_event

    with pytest.raises(ValueError):
        decode_plain_event('2["e",')


def test_plain_per_event_metrics_read_as_prometheus_clients_own() -> None:
    """The lock-free per-event series (server/core/metrics.py) expose exactly what
    prometheus-client's Counter and Histogram would: same names, labels, `le`
    buckets, counts and sums."""
    from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

    from server.core.metrics import HANDLER_BUCKETS, PlainCounterFamily, PlainHistogram

    theirs, ours = CollectorRegistry(), CollectorRegistry()
    counter = Counter("t_messages", "doc", ["event"], registry=theirs)
    histogram = Histogram("t_seconds", "doc", ["event"], buckets=HANDLER_BUCKETS, registry=theirs)
    plain_counter = PlainCounterFamily("t_messages", "doc", "event", registry=ours)
    plain_histogram = PlainHistogram("t_seconds", "doc", "event", HANDLER_BUCKETS, registry=ours)
    for event, seconds in [("a", 0.0001), ("a", 0.0005), ("b", 0.003), ("a", 0.7), ("b", 9.0)]:
        counter.labels(event).inc()
        plain_counter.labels(event).inc()
        histogram.labels(event).observe(seconds)
        plain_histogram.labels(event).observe(seconds)
    assert generate_latest(ours) == generate_latest(theirs)
