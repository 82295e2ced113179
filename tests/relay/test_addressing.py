"""Whom a shared-channel message is for, and what a region announced (relay.wire),
without processes: tables of the messages python-socketio's pub/sub manager writes."""

from __future__ import annotations

from typing import Any

import pytest

from relay.wire import Addressee, Channels, Members, addressee
from server.sio.cluster.fanout import heartbeat_channel_name, heartbeat_channel_owner

SID = "r2-a.AbCdEfGhIjKlMnOpQrSt"
CHANNELS = Channels("iofleet")


@pytest.mark.parametrize(
    ("message", "expected"),
    [
        ({"method": "emit", "room": SID, "host_id": "h1"}, Addressee("node", "r2-a")),
        ({"method": "emit", "room": None, "host_id": "h1"}, None),  # the namespace
        ({"method": "emit", "room": [SID, "x"], "host_id": "h1"}, None),  # several rooms
        ({"method": "emit", "room": "support-42"}, None),  # (an app room on the shared channel)
        ({"method": "callback", "host_id": "h9", "sid": SID}, Addressee("host", "h9")),
        ({"method": "callback", "host_id": ""}, None),
        ({"method": "enter_room", "sid": SID, "room": "r"}, Addressee("node", "r2-a")),
        ({"method": "leave_room", "sid": SID, "room": "r"}, Addressee("node", "r2-a")),
        ({"method": "disconnect", "sid": SID}, Addressee("node", "r2-a")),
        ({"method": "disconnect", "sid": "not-a-sid"}, None),
        ({"method": "close_room", "room": "r"}, None),
        ({"id": "q1", "reply_to": "x"}, None),
    ],
)  # fmt: skip
def test_the_addressee_of_each_kind_of_message(
    message: dict[str, Any], expected: Addressee | None
) -> None:
    assert addressee(message) == expected


def test_heartbeat_channels_name_the_node_and_the_host() -> None:
    name = heartbeat_channel_name("iofleet", "r2-a", "0123abcd")
    assert heartbeat_channel_owner(name, "iofleet") == ("r2-a", "0123abcd")
    assert heartbeat_channel_owner(name, "other") is None
    assert heartbeat_channel_owner("iofleet#heartbeat#0123abcd", "iofleet") is None  # old form
    assert heartbeat_channel_owner("iofleet#room#/#r", "iofleet") is None


def test_members_keep_rooms_and_nodes_apart_and_a_restarted_node_stays_known() -> None:
    members = Members(CHANNELS)
    old = heartbeat_channel_name("iofleet", "r2-a", "old-host").encode()
    new = heartbeat_channel_name("iofleet", "r2-a", "new-host").encode()
    members.replace([b"iofleet#room#/#support-42", old, b"iofleet#query"])
    assert members.rooms == {b"iofleet#room#/#support-42"}
    assert members.has(Addressee("node", "r2-a")) and members.has(Addressee("host", "old-host"))
    # The node restarted under its id: the new channel is announced before the old goes.
    members.add(new)
    members.add(new)  # announced twice (a re-read): counted once
    members.discard(old)
    assert members.has(Addressee("node", "r2-a"))
    assert not members.has(Addressee("host", "old-host"))
    members.discard(new)
    assert not members.has(Addressee("node", "r2-a"))
    members.discard(new)  # a withdrawal heard twice does not go negative
    members.add(new)
    assert members.has(Addressee("node", "r2-a"))
