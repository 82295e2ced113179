"""The pure parts of connection state recovery (`server/sio/cluster/recovery.py`): stream ids,
which stream entries concern a socket, an emit message's event arguments, and the key
layout on one Redis and on a Redis Cluster."""

from __future__ import annotations

from typing import Any

import pytest
from redis.crc import key_slot

from server.sio.cluster.recovery import KeyLayout, concerns, event_arguments, hash_tag, stream_id

SID = "node-a.AAAAAAAAAAAAAAAAAAAA"


@pytest.mark.parametrize(
    ("offset", "parsed"),
    [
        ("1700000000000-0", (1700000000000, 0)),
        ("1700000000000-12", (1700000000000, 12)),
        ("1700000000000", None),  # a stream id always has its sequence here
        ("abc-1", None),
        ("-", None),
        ("", None),
        ("1-2-3", None),
    ],
)
def test_stream_id(offset: str, parsed: tuple[int, int] | None) -> None:
    assert stream_id(offset) == parsed


def test_stream_ids_order_by_time_then_sequence() -> None:
    assert stream_id("9-5") < stream_id("10-0") < stream_id("10-1")  # type: ignore[operator]


def emit(**fields: Any) -> dict[str, Any]:
    return {"method": "emit", "event": "e", "data": [1], "namespace": "/", **fields}


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        (emit(room="r"), True),
        (emit(room="other"), False),
        (emit(room=None), True),  # the whole namespace
        (emit(room=SID), True),  # the socket's own room
        (emit(room="node-b.BBBBBBBBBBBBBBBBBBBB"), False),  # another socket
        (emit(room=["x", "r"]), True),
        (emit(room=["x", "y"]), False),
        (emit(room="r", skip_sid=SID), False),
        (emit(room="r", skip_sid=["z", SID]), False),
        (emit(room="r", skip_sid="z"), True),
        (emit(room="r", namespace="/chat"), False),
        ({**emit(room="r"), "method": "enter_room"}, False),
    ],
)
def test_which_entries_concern_a_socket(message: dict[str, Any], expected: bool) -> None:
    assert concerns(message, SID, "/", {"r"}) is expected


@pytest.mark.parametrize(
    ("data", "arguments"),
    [
        ([{"a": 1}], [{"a": 1}]),  # emit(event, {"a": 1})
        ([None], []),  # emit(event): no argument
        ([[1, 2]], [[1, 2]]),  # one list argument
        ([1, "two"], [1, "two"]),  # emit(event, (1, "two")): several
    ],
)
def test_event_arguments_as_python_socketio_spreads_them(
    data: list[Any], arguments: list[Any]
) -> None:
    assert event_arguments({"data": data}) == arguments


def test_one_redis_keeps_the_keys_it_always_had() -> None:
    """A fleet upgraded in place finds its stream, sessions and channels where they were."""
    keys = KeyLayout("iofleet")
    assert keys.stream("/") == keys.stream("/admin") == "iofleet#stream"
    assert keys.session("p1") == "iofleet#session#p1"
    assert keys.room_channel("/", "lobby") == "iofleet#room#/#lobby"


@pytest.mark.parametrize(
    ("sharded", "message", "channel"),
    [
        (False, {"method": "emit", "room": "r", "namespace": "/chat"}, "iofleet#room#/chat#r"),
        (False, {"method": "emit", "room": None, "namespace": "/"}, "iofleet"),
        (False, {"method": "emit", "room": SID, "namespace": "/"}, "iofleet"),
        (False, {"method": "emit", "room": ["a", "b"], "namespace": "/"}, "iofleet"),
        (True, {"method": "emit", "room": "r", "namespace": "/"}, "iofleet#room#{iofleet#/}#r"),
        (True, {"method": "emit", "room": None, "namespace": "/"}, "iofleet#room#{iofleet#/}"),
    ],
)  # fmt: skip
def test_a_recoverable_emit_s_channel_has_one_rule(
    sharded: bool, message: dict[str, Any], channel: str
) -> None:
    """The servers publish a recoverable emit there, and the relay's catch-up finds a
    stream entry's channel there (`relay.catchup`)."""
    assert KeyLayout("iofleet", sharded=sharded).channel_of(message) == channel


@pytest.mark.parametrize("namespace", ["/", "/chat", "/a}b", "/{x}"])
@pytest.mark.parametrize("channel", ["iofleet", "app{blue}"])
def test_a_namespace_s_keys_share_one_slot_on_a_cluster(channel: str, namespace: str) -> None:
    """The emit script touches the stream and one channel: they must hash to one
    slot whatever the names hold (braces in a room, a namespace or the channel)."""
    keys = KeyLayout(channel, sharded=True)
    stream = keys.stream(namespace)
    channels = [keys.namespace_channel(namespace)]
    channels += [keys.room_channel(namespace, room) for room in ("lobby", "r{1}", "}", "{")]
    slots = {key_slot(name.encode()) for name in [stream, *channels]}
    assert len(slots) == 1, (stream, channels)
    assert all(keys.stream_of_channel(name) == stream for name in channels)


def test_namespaces_spread_over_the_slots_on_a_cluster() -> None:
    keys = KeyLayout("iofleet", sharded=True)
    assert keys.stream("/") == "iofleet#stream#{iofleet#/}"
    assert keys.room_channel("/", "r") == "iofleet#room#{iofleet#/}#r"
    slots = {key_slot(keys.stream(f"/ns{i}").encode()) * 3 // 16384 for i in range(12)}
    assert slots == {0, 1, 2}  # twelve namespaces reach all three masters' thirds


@pytest.mark.parametrize(
    ("key", "tag"),
    [("a{b}c", "b"), ("a{}c", "a{}c"), ("a{b", "a{b"), ("{x}{y}", "x"), ("a}{b}", "b")],
)
def test_hash_tag_is_redis_s_rule(key: str, tag: str) -> None:
    assert key_slot(key.encode()) == key_slot(hash_tag(key).encode())
    assert hash_tag(key) == tag
