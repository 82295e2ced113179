"""The relay's settings and wire rules, without processes: a bad setting stops it
with one line naming the variable (never a password); a message carries its origin
once, loses its near offset, and a relayed one is never forwarded again."""

from __future__ import annotations

import subprocess
import sys

import orjson
import pytest

from relay.layout import RegionLayout
from relay.settings import Settings, parse_peers
from relay.wire import ORIGIN, Channels, decode, forward_of, interest_change
from server.net.redis_topology import parse_redis_url
from server.sio.cluster.fanout import QUERY_SUFFIX, ROOM_CHANNEL_INFIX
from tests.support.procs import REPO

BASE_ENV = {
    "IOFLEET_RELAY_REGION": "r1",
    "IOFLEET_RELAY_REDIS_URL": "redis://127.0.0.1:6379/0",
    "IOFLEET_RELAY_FAR_REDIS_URL": "r2=rediss://:hunter2-token@far.example:6379/0",
}


def run_relay(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "relay"],
        env={"PATH": "/usr/bin:/bin", **env},
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"IOFLEET_RELAY_REGION": "R 1"}, "IOFLEET_RELAY_REGION"),
        ({"IOFLEET_RELAY_FAR_REDIS_URL": "r2"}, "IOFLEET_RELAY_FAR_REDIS_URL"),
        ({"IOFLEET_RELAY_FAR_REDIS_URL": "r1=redis://:hunter2-token@x:6379/0"}, "names this"),
        ({"IOFLEET_RELAY_REQUIRE_TLS": "true", "IOFLEET_RELAY_FAR_REDIS_URL":
          "r2=redis://:hunter2-token@far:6379/0"}, "not rediss://"),
        ({"IOFLEET_RELAY_OUTBOX_MESSAGES": "-1"}, "IOFLEET_RELAY_OUTBOX_MESSAGES"),
    ],
)  # fmt: skip
def test_a_bad_setting_stops_the_relay_with_one_line_and_no_password(
    change: dict[str, str], named: str
) -> None:
    done = run_relay({**BASE_ENV, **change})
    assert done.returncode == 2
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and named in lines[0], done.stderr
    assert "hunter2" not in done.stderr


def test_peers_parse_and_settings_default_the_linger_to_the_recovery_window() -> None:
    peers = parse_peers("r2=rediss://:t@a:6379/0, r3=redis://b:6379/0")
    assert [p.region for p in peers] == ["r2", "r3"]
    assert "t@" not in str(peers[0])  # shown masked
    settings = Settings(region="r1", redis_url="redis://a:1/0", far_redis_url="r2=redis://b:1/0")
    assert settings.linger_seconds() == settings.recovery_window_seconds == 120
    off = Settings(
        region="r1", redis_url="redis://a:1/0", far_redis_url="r2=redis://b:1/0", recovery=False
    )
    assert off.linger_seconds() == 0


def test_the_relay_uses_the_servers_channel_names() -> None:
    channels = Channels("iofleet")
    assert channels.room_pattern == f"iofleet{ROOM_CHANNEL_INFIX}*"
    assert channels.query == f"iofleet{QUERY_SUFFIX}"


def test_a_forwarded_message_is_marked_once_and_loses_its_offset() -> None:
    message = decode(b'{"method":"emit","event":"e","room":"r","offset":"1-0","host_id":""}')
    assert message is not None
    forward = forward_of(message, "iofleet#room#/#r", "r1", now=1.0)
    assert forward is not None and forward.streamed
    relayed = orjson.loads(forward.message)
    assert relayed[ORIGIN] == "r1" and "offset" not in relayed
    assert forward.message.endswith(b"}")  # the recovery script appends the far offset
    # What a relay republished is never forwarded again (no loop, no echo).
    again = decode(forward.message)
    assert again is not None and forward_of(again, "iofleet#room#/#r", "r2", now=2.0) is None
    plain = decode(b'{"method":"callback","host_id":"h","id":1,"args":[]}')
    assert plain is not None
    forward = forward_of(plain, "iofleet", "r1", now=1.0)
    assert forward is not None and not forward.streamed


def test_unreadable_messages_and_interest_changes_are_refused() -> None:
    assert decode(b"not json") is None and decode(b"[1, 2]") is None
    assert interest_change(b"+iofleet#room#/#r") == ("+", b"iofleet#room#/#r")
    assert interest_change(b"*") == ("*", b"")
    assert interest_change(b"?x") is None and interest_change(b"+") is None


def test_cluster_urls_are_peers_and_tls_is_read_off_the_scheme() -> None:
    """A Cluster URL lists its seeds comma-separated inside the comma-separated peers."""
    peers = parse_peers("r2=rediss+cluster://:t@a:6379,b:6379,r3=redis://c:6379/0")
    assert [(p.region, p.redis_url) for p in peers] == [
        ("r2", "rediss+cluster://:t@a:6379,b:6379"),
        ("r3", "redis://c:6379/0"),
    ]
    tls = Settings(
        region="r1",
        redis_url="redis+cluster://a:1,b:2",
        far_redis_url="r2=rediss+cluster://:t@x:6379",
        require_tls=True,
    )
    assert tls.peer_list()[0].region == "r2"
    with pytest.raises(ValueError, match="not rediss://"):
        Settings(
            region="r1",
            redis_url="redis://a:1/0",
            far_redis_url="r2=redis+cluster://x:6379",
            require_tls=True,
        )
    with pytest.raises(ValueError, match="a peer is"):
        parse_peers("r2=redis://a:1/0,b:2")  # a seed after a single-Redis URL


def test_names_cross_between_a_cluster_layout_and_one_redis() -> None:
    """A far region's interest is read into this region's names, and a message is
    written where the far region's servers would publish it (`KeyLayout`)."""
    single = RegionLayout.of("iofleet", parse_redis_url("redis://a:1/0"), recovery=True)
    cluster = RegionLayout.of("iofleet", parse_redis_url("redis+cluster://a:1"), recovery=True)
    plain_cluster = RegionLayout.of("iofleet", parse_redis_url("redis+cluster://a:1"), False)
    tagged = b"iofleet#room#{iofleet#/chat}#support#42"
    assert single.near_name(tagged, cluster) == b"iofleet#room#/chat#support#42"
    assert cluster.near_name(b"iofleet#room#/chat#support#42", single) == tagged
    assert single.near_name(b"iofleet#room#{iofleet#/chat}", cluster) is None
    assert cluster.namespace_of(b"iofleet#room#{iofleet#/chat}") == "/chat"
    assert cluster.namespace_of(tagged) is None
    assert plain_cluster.near_name(b"iofleet#room#/#r", single) == b"iofleet#room#/#r"
    room = {"method": "emit", "namespace": "/", "room": "r"}
    namespace = {"method": "emit", "namespace": "/", "room": None}
    assert cluster.channel_of(room, streamed=True) == "iofleet#room#{iofleet#/}#r"
    assert cluster.channel_of(namespace, streamed=True) == "iofleet#room#{iofleet#/}"
    assert cluster.channel_of(namespace, streamed=False) == "iofleet"
    assert single.channel_of(namespace, streamed=True) == "iofleet"
    assert cluster.stream_of("iofleet#room#{iofleet#/}#r") == "iofleet#stream#{iofleet#/}"
