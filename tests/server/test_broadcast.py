"""Room broadcasts framed once (server/sio/broadcast.py) reach every stock client, in
order, over every transport; the sent-messages metric stays exact; a client that
stops reading is dropped with a reason and counted, never buffered without bound."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
from typing import Any

import orjson
import pytest
from aiohttp._websocket.writer import WebSocketWriter

from server.net.ws_transport import text_frame
from tests.server.conftest import PyClient
from tests.server.rooms_app import BLOB
from tests.support.jsclient import JsClients
from tests.support.metrics import metric
from tests.support.procs import ServerProcess, make_token, wait_until

ROOM = "fanout"
FAST = {"IOFLEET_RATE_LIMIT": "100000"}


class CapturingTransport:
    """Collects what aiohttp's WebSocketWriter writes (the reference framing)."""

    def __init__(self) -> None:
        self.written = bytearray()

    def write(self, data: bytes) -> None:
        self.written += data

    def is_closing(self) -> bool:
        return False


@pytest.mark.parametrize("size", [0, 5, 125, 126, 65535, 65536, 70000])
async def test_text_frame_matches_aiohttp_framing(size: int) -> None:
    payload = b"4" + b"x" * size
    transport = CapturingTransport()
    writer = WebSocketWriter(None, transport, use_mask=False)  # type: ignore[arg-type]
    await writer.send_frame(payload, 0x1)
    assert text_frame(payload) == bytes(transport.written)


async def test_every_stock_client_gets_every_broadcast_in_order(
    start_server, js: JsClients, py_clients
) -> None:
    # Deflate on: the JS client over WebSocket negotiates it and is served by
    # aiohttp's WebSocket, where large messages take the queued path; the Python
    # client offers no deflate and is served below aiohttp (server/net/ws_transport.py).
    server = start_server("bcast", IOFLEET_WS_COMPRESSION="true", **FAST)
    # Both stock clients, over WebSocket and over long-polling.
    await js.open(
        "js-ws", server.url, auth={"token": make_token("js-ws")}, transports=["websocket"]
    )
    await js.open(
        "js-poll", server.url, auth={"token": make_token("js-poll")}, transports=["polling"]
    )
    for name in ("js-ws", "js-poll"):
        await js.wait_client(name, "connect")
        reply = await js.call(name, "room:join", {"room": ROOM})
        assert reply["ok"], reply
    py_ws = await py_clients(server.url, user="py-ws", transports=["websocket"])
    py_poll = await py_clients(server.url, user="py-poll", transports=["polling"])
    for client in (py_ws, py_poll):
        reply = await client.sio.call("room:join", {"room": ROOM}, timeout=10)
        assert reply["ok"], reply

    sent_before = metric(server.admin_url, "iofleet_messages_sent_total")
    # Several in flight at once, large (deflated, so queued for the JS WebSocket) and
    # small (written straight away) mixed: a small one must not overtake a large one.
    texts = [f"m{i}-" + "y" * (1500 if i % 3 == 0 else i) for i in range(60)]
    for first in range(0, len(texts), 6):
        replies = await asyncio.gather(
            *(
                py_ws.sio.call("chat:message", {"room": ROOM, "text": text}, timeout=10)
                for text in texts[first : first + 6]
            )
        )
        assert replies == [{"ok": True}] * len(replies)

    orders = []
    for client in (py_ws, py_poll):
        await client.wait(lambda c=client: len(c.received("chat:message")) >= len(texts))
        orders.append([m["text"] for m in client.received("chat:message")])
    for name in ("js-ws", "js-poll"):

        def got(name: str = name) -> int:
            return len(js.seen(name, "event", "chat:message"))

        await js.wait_for(lambda _message, got=got: got() >= len(texts), timeout=15)
        orders.append([m["args"][0]["text"] for m in js.seen(name, "event", "chat:message")])
    assert sorted(orders[0]) == sorted(texts)
    for order in orders[1:]:  # every client saw the one order the server broadcast in
        assert order == orders[0]
    # Each message: one packet to each of the 4 members, one ack to the sender.
    sent = metric(server.admin_url, "iofleet_messages_sent_total") - sent_before
    assert sent == len(texts) * (4 + 1)


class StalledClient:
    """A raw WebSocket Socket.IO client that joins a room and then stops reading."""

    def __init__(self, port: int) -> None:
        self.sock = socket.socket()
        # A small receive window, so the server's side fills quickly.
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall(
            (
                "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
                f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
            ).encode()
        )
        self.buffer = b""

    def _frame(self, payload: bytes) -> bytes:
        size = len(payload)
        assert size < 65536
        length = bytes((0x80 | size,)) if size < 126 else b"\xfe" + size.to_bytes(2, "big")
        return b"\x81" + length + b"\0\0\0\0" + payload  # masked with the zero key

    def _read_until(self, marker: bytes) -> None:
        while marker not in self.buffer:
            chunk = self.sock.recv(65536)
            assert chunk, f"closed while waiting for {marker!r}"
            self.buffer += chunk
        self.buffer = self.buffer.split(marker, 1)[1]

    def join(self, token: str, room: str) -> None:
        self._read_until(b'"sid"')  # Engine.IO OPEN
        self.sock.sendall(self._frame(b"40" + orjson.dumps({"token": token})))
        self._read_until(b"server:hello")
        self.sock.sendall(self._frame(b"421" + orjson.dumps(["room:join", {"room": room}])))
        self._read_until(b'431[{"ok":true')

    def dropped(self) -> bool:
        """Whether the server closed the connection (read what is left to see EOF)."""
        self.sock.settimeout(0.05)
        try:
            while True:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    return True
        except TimeoutError:
            return False
        except OSError:
            return True


async def test_a_slow_consumer_is_dropped_and_counted(start_server, py_clients) -> None:
    server: ServerProcess = start_server("slow", **FAST)
    stalled = StalledClient(server.port)
    stalled.join(make_token("stalled"), ROOM)
    sender = await py_clients(server.url, user="sender")
    reader = await py_clients(server.url, user="reader")
    for client in (sender, reader):
        assert (await client.sio.call("room:join", {"room": ROOM}, timeout=10))["ok"]

    text = "z" * 3900  # about 4 KB a packet: kernel buffers fill in a few thousand
    sent = 0
    with contextlib.closing(stalled.sock):
        for batch in range(400):  # bounded: 8,000 messages at most
            replies = await asyncio.gather(
                *(
                    sender.sio.call("chat:message", {"room": ROOM, "text": text}, timeout=20)
                    for _ in range(20)
                )
            )
            assert all(r == {"ok": True} for r in replies)
            sent += 20
            if batch % 10 == 9 and metric(server.admin_url, "iofleet_slow_consumers_total") >= 1:
                break
        assert metric(server.admin_url, "iofleet_slow_consumers_total") == 1
        wait_until(stalled.dropped, timeout=10, what="the stalled client's connection closed")
    # Everyone else got everything, and the node still serves.
    await reader.wait(lambda: len(reader.received("chat:message")) >= sent, timeout=20)
    entries = [e for e in server.log_entries() if e.get("event") == "send.slow_consumer"]
    assert len(entries) == 1 and entries[0]["user"] == "stalled", entries
    assert (await reader.sio.call("room:join", {"room": "after"}, timeout=10))["ok"]


async def test_sent_packets_are_counted_once_each(start_server, py_clients) -> None:
    """`iofleet_messages_sent_total` adds exactly the Socket.IO packets each send
    gave to clients: a broadcast one per recipient, an ack one, a direct emit
    one, and a packet with a binary attachment one per recipient (its attachment
    is part of it), whether to one client or to a room."""
    server = start_server("counted", IOFLEET_HANDLERS="tests.server.rooms_app:register", **FAST)
    clients = [await py_clients(server.url, user=f"counted-{i}") for i in range(3)]
    for client in clients:
        assert await client.sio.call("join", {"room": "counted"}, timeout=10) == {"ok": True}
    sender = clients[0]

    def sent() -> float:
        return metric(server.admin_url, "iofleet_messages_sent_total")

    async def added_by(send: Any, *expected: tuple[PyClient, str, int]) -> float:
        before = sent()
        await send()
        for client, event, count in expected:
            await client.wait(lambda c=client, e=event, n=count: len(c.received(e)) >= n)
        return sent() - before

    room = {"room": "counted"}
    everyone = [(client, "note", 1) for client in clients]
    assert await added_by(lambda: sender.sio.emit("to_room", room), *everyone) == 3
    assert await added_by(lambda: sender.sio.call("echo", "hi", timeout=10)) == 1
    assert await added_by(lambda: sender.sio.emit("to_me"), (sender, "note", 2)) == 1
    assert await added_by(lambda: sender.sio.emit("binary_to_me"), (sender, "blob", 1)) == 1
    to_everyone = [(client, "blob", 2 if client is sender else 1) for client in clients]
    assert await added_by(lambda: sender.sio.emit("binary_to_room", room), *to_everyone) == 3
    assert sender.received("blob") == [BLOB, BLOB]
