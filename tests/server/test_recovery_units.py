"""The pure parts of connection state recovery (`server/sio/cluster/recovery.py`): stream ids,
which stream entries concern a socket, and an emit message's event arguments."""

from __future__ import annotations

from typing import Any

import pytest

from server.sio.cluster.recovery import concerns, event_arguments, stream_id

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
