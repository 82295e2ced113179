"""The private upstream surface iofleet's server overrides, calls or reads.

`server/sio/server.py`, `server/sio/cluster/fanout.py`, `server/eio/deflate_ws.py`
and `server/net/` extend python-socketio and aiohttp at methods that are not
public API. On the Engine.IO side the one private name left is python-socketio's
`_engineio_server_class` (the seam: iofleet's own Engine.IO server,
`server.eio.engine`, sits behind it; tests/server/test_engine_seam.py). When an
upgrade renames one or changes its parameters, these tests fail
naming the method, instead of the server misbehaving at run time.
`pyproject.toml` bounds the versions this was checked with.
"""

from __future__ import annotations

import inspect
from typing import Any

import pytest
import socketio
from aiohttp import web

# (owner, method name, the parameters after `self` the server relies on)
METHODS: list[tuple[Any, str, list[str]]] = [
    # socketio.AsyncServer: overridden in server/sio/server.py
    (socketio.AsyncServer, "_engineio_server_class", []),
    (socketio.AsyncServer, "_handle_connect", ["eio_sid", "namespace", "data"]),
    (socketio.AsyncServer, "_trigger_event", ["event", "namespace", "args"]),
    (socketio.AsyncServer, "_handle_event", ["eio_sid", "namespace", "id", "data"]),
    (
        socketio.AsyncServer,
        "_handle_event_internal",
        ["server", "sid", "eio_sid", "data", "namespace", "id"],
    ),
    (socketio.AsyncServer, "_handle_eio_message", ["eio_sid", "data"]),
    (socketio.AsyncServer, "_send_packet", ["eio_sid", "pkt"]),
    (socketio.AsyncServer, "_send_eio_packet", ["eio_sid", "eio_pkt"]),
    (socketio.AsyncServer, "enter_room", ["sid", "room", "namespace"]),
    (socketio.AsyncServer, "rooms", ["sid", "namespace"]),
    (socketio.AsyncServer, "save_session", ["sid", "session", "namespace"]),
    (
        socketio.AsyncServer,
        "emit",
        ["event", "data", "to", "room", "skip_sid", "namespace", "callback", "ignore_queue"],
    ),
    # the manager, read by server/sio/server.py
    (socketio.AsyncManager, "sid_from_eio_sid", ["eio_sid", "namespace"]),
    (socketio.AsyncManager, "eio_sid_from_sid", ["sid", "namespace"]),
    (socketio.AsyncManager, "get_participants", ["namespace", "room"]),
    (socketio.AsyncManager, "initialize", []),
    # the manager's room bookkeeping, overridden by server.sio.rooms.RoomIndex (every
    # room change goes through these; basic_close_room leaves each member, which
    # tests/server/test_rooms.py checks against the library)
    (socketio.AsyncManager, "basic_enter_room", ["sid", "namespace", "room", "eio_sid"]),
    (socketio.AsyncManager, "basic_leave_room", ["sid", "namespace", "room"]),
    (socketio.AsyncManager, "basic_disconnect", ["sid", "namespace", "kwargs"]),
    (socketio.AsyncManager, "basic_close_room", ["room", "namespace"]),
    (socketio.AsyncManager, "get_rooms", ["sid", "namespace"]),
    (socketio.AsyncManager, "pre_connect", ["eio_sid", "namespace"]),
    # the manager's emit, overridden by server.sio.broadcast.BroadcastEmit (and reached
    # from the Redis listener's _handle_emit through super())
    (
        socketio.AsyncManager,
        "emit",
        ["event", "data", "namespace", "room", "skip_sid", "callback", "to", "kwargs"],
    ),
    (socketio.AsyncRedisManager, "_handle_emit", ["message"]),
    # the listener's channel filter, overridden for per-room channels in
    # server/sio/cluster/fanout.py
    (socketio.AsyncRedisManager, "_listen", []),
    # socketio.AsyncRedisManager: overridden in server/sio/cluster/fanout.py
    (socketio.AsyncRedisManager, "_redis_connect", []),
    (socketio.AsyncRedisManager, "_publish", ["data"]),
    (socketio.AsyncRedisManager, "_redis_listen_with_retries", []),
    # aiohttp: per-frame compression in server/eio/deflate_ws.py
    (web.WebSocketResponse, "send_str", ["data", "compress"]),
    (web.WebSocketResponse, "send_bytes", ["data", "compress"]),
]


@pytest.mark.parametrize(
    ("owner", "name", "params"), METHODS, ids=[f"{o.__name__}.{n}" for o, n, _ in METHODS]
)
def test_upstream_method_is_there_with_its_parameters(
    owner: Any, name: str, params: list[str]
) -> None:
    where = f"{owner.__module__}.{owner.__qualname__}.{name}"
    method = getattr(owner, name, None)
    assert method is not None, f"upstream method {where} is gone; iofleet overrides or calls it"
    actual = [p for p in inspect.signature(method).parameters if p != "self"]
    missing = [p for p in params if p not in actual]
    assert not missing, f"upstream method {where} lost parameters {missing}: now {actual}"


def test_upstream_attributes_the_server_reads() -> None:
    """Attributes set in upstream constructors: `manager.rooms`, `manager_initialized`,
    aiohttp's WebSocket writer with its `compress` switch."""
    sio = socketio.AsyncServer(async_mode="aiohttp")
    for name in (
        "manager",
        "manager_initialized",
        "handlers",
        "namespace_handlers",
        "namespaces",
        "not_handled",
        "packet_class",
        "eio",
    ):
        assert hasattr(sio, name), f"socketio.AsyncServer.{name} is gone"
    assert isinstance(sio.manager.rooms, dict), "socketio manager.rooms is no longer a dict"
    # server/sio/server.py's event fast path: binary packets in progress, and the
    # handlers-in-tasks switch it keeps to.
    assert isinstance(getattr(sio, "_binary_packet", None), dict), "sio._binary_packet changed"
    assert sio.async_handlers is True, "socketio async_handlers no longer defaults to True"
    for name in ("callbacks", "pending_connect", "pending_disconnect"):
        # server.sio.rooms.RoomIndex.basic_disconnect cleans these up as the library does
        assert isinstance(getattr(sio.manager, name, None), dict), f"manager.{name} changed"
    writer_params = inspect.signature(web.WebSocketResponse.__init__).parameters
    assert "max_msg_size" in writer_params and "compress" in writer_params
    assert "_writer" in web.WebSocketResponse.__slots__ or hasattr(
        web.WebSocketResponse(), "_writer"
    ), "aiohttp WebSocketResponse._writer is gone"


def test_broadcast_surface() -> None:
    """What server/sio/broadcast.py relies on: the Redis listener's local delivery reaches
    `BroadcastEmit.emit` (the MRO), an Engine.IO packet caches its encoding (one
    shared packet per broadcast), and aiohttp's WebSocket writer exposes the
    transport and closing flag a ready frame is written past."""
    from engineio import packet as eio_packet
    from socketio.async_pubsub_manager import AsyncPubSubManager

    from server.sio.broadcast import BroadcastEmit
    from server.sio.cluster.fanout import FanoutManager

    mro = FanoutManager.__mro__
    assert (
        mro.index(AsyncPubSubManager) < mro.index(BroadcastEmit) < mro.index(socketio.AsyncManager)
    ), "BroadcastEmit no longer sits between AsyncPubSubManager and AsyncManager"
    pkt = eio_packet.Packet(eio_packet.MESSAGE, '2["e"]')
    assert pkt.encode() == '42["e"]' and pkt.encode_cache == '42["e"]', (
        "engineio Packet.encode no longer caches in encode_cache"
    )
    from aiohttp._websocket.writer import WebSocketWriter

    writer = WebSocketWriter(None, None)  # type: ignore[arg-type]
    for name in ("transport", "_closing", "compress"):
        assert hasattr(writer, name), f"aiohttp WebSocketWriter.{name} is gone"
    assert hasattr(eio_packet.Packet(), "encode_cache")


def test_recovery_surface() -> None:
    """What server/sio/cluster/recovery.py relies on. `RecoveringFanoutManager.pre_connect` repeats
    python-socketio's `BaseManager.pre_connect` with a given sid (the library draws a
    new one from `server.eio.generate_id()`): that body must still be the one copied.
    Recoverable emits carry `host_id` "" so that the listener (`_thread`) hands them
    to this node too; the listener passes redis-py's `pong` messages (PING on the
    subscriber connection) through; `AsyncPubSubManager.emit` honours `ignore_queue`."""
    from redis.asyncio.client import PubSub
    from socketio.async_pubsub_manager import AsyncPubSubManager
    from socketio.base_manager import BaseManager

    pre_connect = inspect.getsource(BaseManager.pre_connect)
    for piece in (
        "self.server.eio.generate_id()",
        "self.basic_enter_room(sid, namespace, None, eio_sid=eio_sid)",
        "except ValueDuplicationError",
        "self.basic_enter_room(sid, namespace, sid, eio_sid=eio_sid)",
        "self.pending_connect[namespace].append(sid)",
    ):
        assert piece in pre_connect, f"socketio BaseManager.pre_connect changed: {piece!r} gone"
    thread = inspect.getsource(AsyncPubSubManager._thread)
    assert "data.get('host_id') != self.host_id" in thread, (
        "socketio AsyncPubSubManager._thread no longer skips only its own host_id"
    )
    assert "kwargs.get('ignore_queue')" in inspect.getsource(AsyncPubSubManager.emit), (
        "socketio AsyncPubSubManager.emit no longer honours ignore_queue"
    )
    assert "message" in inspect.signature(PubSub.ping).parameters, "redis-py PubSub.ping(message)"
    assert 'message_type != "pong"' in inspect.getsource(PubSub.handle_message), (
        "redis-py PubSub.handle_message no longer passes pong messages to listen()"
    )


def test_receive_and_payload_surface() -> None:
    """What server/eio relies on in python-socketio and python-engineio's codecs:
    python-socketio registers its Engine.IO `message` handler as a coroutine
    function (a text MESSAGE is awaited straight), and a long-poll payload's packet
    limit is `Payload.max_decode_packets`."""
    from engineio import payload as eio_payload

    sio = socketio.AsyncServer(async_mode="aiohttp")
    handler = sio.eio.handlers.get("message")
    assert handler is not None and inspect.iscoroutinefunction(handler), (
        "socketio no longer registers a coroutine `message` handler"
    )
    assert isinstance(getattr(eio_payload.Payload, "max_decode_packets", None), int), (
        "engineio Payload.max_decode_packets is gone"
    )


def test_websocket_takeover_surface() -> None:
    """What server/net/ws_transport.py relies on to serve a WebSocket below aiohttp:
    aiohttp's request exposes its protocol and transport; the protocol's `transport` can be
    cleared (every write aiohttp makes goes through it) and it has
    `connection_lost` (which unregisters it from aiohttp's server); bytes read
    behind an upgrade's head wait in its `_message_tail`; and `websocket_mask`
    unmasks a payload in place."""
    from aiohttp._websocket.helpers import websocket_mask
    from aiohttp.base_protocol import BaseProtocol
    from aiohttp.http_writer import StreamWriter
    from aiohttp.web_protocol import RequestHandler

    for name in ("protocol", "transport"):
        assert isinstance(getattr(web.BaseRequest, name, None), property), (
            f"aiohttp BaseRequest.{name} is gone"
        )
    assert "transport" in BaseProtocol.__slots__, "aiohttp BaseProtocol.transport is gone"
    received = inspect.getsource(RequestHandler.data_received)
    assert "self._message_tail = tail" in received, (
        "aiohttp RequestHandler no longer keeps the bytes behind an upgrade in _message_tail"
    )
    lost = inspect.getsource(RequestHandler.connection_lost)
    assert "self._manager.connection_lost(self, exc)" in lost, (
        "aiohttp RequestHandler.connection_lost no longer unregisters from its server"
    )
    writer = inspect.getsource(StreamWriter._write)
    assert "transport is None" in writer, (
        "aiohttp StreamWriter._write no longer refuses to write without a transport"
    )
    payload = bytearray(b"\x00\x01\x02\x03\xff")
    websocket_mask(b"\x01\x02\x03\x04", payload)
    assert payload == bytearray(b"\x01\x03\x01\x07\xfe")


def test_websocket_accept_surface() -> None:
    """What server/net/ws_accept.py relies on to take a WebSocket connect before
    aiohttp: aiohttp's sites keep the runner and the listening server in
    `_runner`/`_server`, register in `BaseSite.start`, and its `web.Server` makes
    one `RequestHandler` per call."""
    assert {"_runner", "_server"} <= set(web.BaseSite.__slots__), "aiohttp BaseSite slots changed"
    assert "_reg_site(self)" in inspect.getsource(web.BaseSite.start)
    assert "RequestHandler(" in inspect.getsource(web.Server.__call__)


def test_head_parser_surface() -> None:
    """server/net/ws_accept.py reads heads with aiohttp's parser built as
    `RequestHandler.__init__` builds its own: the same arguments, from the
    handler's defaults (the public runner sets none of them)."""
    from aiohttp.web_protocol import RequestHandler

    from server.net.ws_accept import HANDLER_DEFAULTS
    from server.node.app import serve

    limits = ["read_bufsize", "max_line_size", "max_field_size", "max_headers"]
    assert sorted(HANDLER_DEFAULTS) == sorted([*limits, "auto_decompress"])
    built = inspect.getsource(RequestHandler.__init__)
    call = built[built.index("HttpRequestParser(") :].partition("\n        )")[0]
    for argument in (
        "read_bufsize,",
        "max_line_size=max_line_size",
        "max_field_size=max_field_size",
        "max_headers=max_headers",
        "payload_exception=RequestPayloadError",
        "auto_decompress=auto_decompress",
        "max_msg_queue_size=MAX_MSG_QUEUE_SIZE",
    ):
        assert argument in call, f"aiohttp RequestHandler builds its parser without {argument}"
    assert call.count("=") == 6, f"aiohttp RequestHandler's parser arguments changed: {call}"
    # The public runner leaves them at the handler's defaults, which the sniffer reads.
    runner = inspect.getsource(serve)
    assert not [name for name in HANDLER_DEFAULTS if name in runner], "set the sniffer's too"


def test_engineio_side_private_surface_is_the_seam_alone() -> None:
    """Of the private upstream names pinned here, none is python-engineio's, and
    the one on the Engine.IO side is python-socketio's `_engineio_server_class`."""
    engineio_pins = [o for o, _, _ in METHODS if o.__module__.startswith("engineio")]
    assert engineio_pins == []
    seam = [n for o, n, _ in METHODS if "engineio" in n]
    assert seam == ["_engineio_server_class"]
