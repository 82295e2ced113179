"""The WebSocket served below aiohttp (server/net/ws_transport.py), on the wire:
fragments and control frames, the close handshake both ways, and every protocol
violation closing only its sender with the RFC 6455 code for it."""

from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest
from aiohttp import web

from server.net.ws_transport import (
    CLOSE_INVALID_DATA,
    CLOSE_MESSAGE_TOO_BIG,
    CLOSE_PROTOCOL_ERROR,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    DetachedResponse,
    WebSocketConnection,
    switching_protocols,
)
from tests.support.metrics import metric_or_zero
from tests.support.procs import make_token
from tests.support.ws_frames import client_frame, open_websocket, read_frame, send_text

MAX_BYTES = 4096


async def connected(port: int, user: str) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A Socket.IO connection over a raw WebSocket, past OPEN, CONNECT and the greeting."""
    head, reader, writer = await open_websocket(port)
    assert head.startswith("http/1.1 101"), head
    _, opcode, opening = await read_frame(reader)
    assert opcode == OP_TEXT and opening.startswith(b"0{")
    await send_text(writer, "40" + json.dumps({"token": make_token(user)}))
    _, _, answer = await read_frame(reader)
    assert answer.startswith(b"40{"), answer
    await read_frame(reader)  # server:hello
    return reader, writer


async def test_fragments_and_a_ping_between_them(start_server) -> None:
    server = start_server("wsfrag")
    reader, writer = await connected(server.port, "frag")
    try:
        writer.write(client_frame(OP_TEXT, b'421["room', fin=False))
        writer.write(client_frame(OP_PING, b"are you there"))
        writer.write(client_frame(OP_CONTINUATION, b':join",', fin=False))
        writer.write(client_frame(OP_CONTINUATION, b'{"room":"r"}]'))
        await writer.drain()
        assert await read_frame(reader) == (False, OP_PONG, b"are you there")
        _, opcode, ack = await read_frame(reader)
        assert opcode == OP_TEXT and ack.startswith(b"431[") and json.loads(ack[3:])[0]["ok"]
    finally:
        writer.close()


async def test_the_clients_close_is_answered_with_its_code(start_server) -> None:
    server = start_server("wsclose")
    reader, writer = await connected(server.port, "closer")
    try:
        writer.write(client_frame(OP_CLOSE, (4001).to_bytes(2, "big") + b"bye"))
        await writer.drain()
        _, opcode, payload = await read_frame(reader)
        assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == 4001
        assert await asyncio.wait_for(reader.read(), 5) == b""  # then the server closes TCP
    finally:
        writer.close()


VIOLATIONS = {
    "unmasked": (client_frame(OP_TEXT, b'42["x"]', masked=False), CLOSE_PROTOCOL_ERROR),
    "reserved-bit": (bytes([0xC1]) + client_frame(OP_TEXT, b"4")[1:], CLOSE_PROTOCOL_ERROR),
    "not-utf8": (client_frame(OP_TEXT, b"42\xff\xfe"), CLOSE_INVALID_DATA),
    "oversize": (client_frame(OP_TEXT, b"4" * (MAX_BYTES + 1)), CLOSE_MESSAGE_TOO_BIG),
    "stray-continuation": (client_frame(OP_CONTINUATION, b"4"), CLOSE_PROTOCOL_ERROR),
    "fragmented-ping": (client_frame(OP_PING, b"x", fin=False), CLOSE_PROTOCOL_ERROR),
    # RFC 6455 5.2: a length in the fewest bytes; 5.5.1 and 7.4: what a close may carry.
    "non-minimal-length": (
        bytes([0x81, 0x80 | 126]) + (4).to_bytes(2, "big") + bytes(4) + b'42["x"]'[:4],
        CLOSE_PROTOCOL_ERROR,
    ),
    "close-code-1005": (client_frame(OP_CLOSE, (1005).to_bytes(2, "big")), CLOSE_PROTOCOL_ERROR),
    "close-code-0": (client_frame(OP_CLOSE, bytes(2)), CLOSE_PROTOCOL_ERROR),
    "close-one-byte": (client_frame(OP_CLOSE, b"\x03"), CLOSE_PROTOCOL_ERROR),
    "close-reason-not-utf8": (
        client_frame(OP_CLOSE, (1000).to_bytes(2, "big") + b"\xff"),
        CLOSE_PROTOCOL_ERROR,
    ),
}


@pytest.mark.parametrize("case", list(VIOLATIONS))
async def test_a_violation_closes_its_sender_with_the_code_for_it(start_server, case) -> None:
    server = start_server(f"ws-{case}", IOFLEET_MAX_MESSAGE_BYTES=str(MAX_BYTES))
    bystander_reader, bystander = await connected(server.port, "bystander")
    reader, writer = await connected(server.port, "offender")
    data, code = VIOLATIONS[case]
    try:
        refused_before = sum(
            metric_or_zero(server.admin_url, "iofleet_events_rejected_total", {"reason": reason})
            for reason in ("malformed", "oversize")
        )
        writer.write(data)
        await writer.drain()
        _, opcode, payload = await asyncio.wait_for(read_frame(reader), 5)
        assert opcode == OP_CLOSE and int.from_bytes(payload[:2], "big") == code
        assert await asyncio.wait_for(reader.read(), 5) == b""
        refused = sum(
            metric_or_zero(server.admin_url, "iofleet_events_rejected_total", {"reason": reason})
            for reason in ("malformed", "oversize")
        )
        assert refused == refused_before + 1
        # The bystander is still served.
        await send_text(bystander, '421["room:join",{"room":"still"}]')
        _, _, ack = await asyncio.wait_for(read_frame(bystander_reader), 5)
        assert ack.startswith(b"431[")
    finally:
        writer.close()
        bystander.close()


@pytest.mark.parametrize("key", ["not base64!", "c2hvcnQ="])  # garbage; 5 bytes, not 16
async def test_a_broken_handshake_gets_a_400(start_server, key: str) -> None:
    server = start_server("wsbad")
    head, _, writer = await open_websocket(server.port, key=key)
    writer.close()
    assert head.startswith("http/1.1 400"), head


async def test_packets_behind_a_slow_connect_wait_for_it_in_order(start_server) -> None:
    """300 events sent right behind a CONNECT whose handler takes 0.3 s: each is
    handled after the connect, in order (past 256 waiting, the connection stops
    reading until they are done, then reads on)."""
    server = start_server(
        "wsslow", IOFLEET_HANDLERS="tests.server.routing_app:register", IOFLEET_RATE_LIMIT="100000"
    )
    reader, writer = await connected(server.port, "slowpoke")
    try:
        burst = [
            client_frame(
                OP_TEXT, ("40/slow," + json.dumps({"token": make_token("slowpoke")})).encode()
            )
        ]
        burst += [client_frame(OP_TEXT, f'42/slow,{n}["count",{n}]'.encode()) for n in range(300)]
        writer.write(b"".join(burst))
        await writer.drain()
        _, _, answer = await asyncio.wait_for(read_frame(reader), 5)
        assert answer.startswith(b"40/slow,{"), answer
        acks = [(await asyncio.wait_for(read_frame(reader), 5))[2] for _ in range(300)]
        assert acks == [f"43/slow,{n}[{n}]".encode() for n in range(300)]
        # The connection reads again afterwards.
        await send_text(writer, '42/slow,300["count",300]')
        assert (await asyncio.wait_for(read_frame(reader), 5))[2] == b"43/slow,300[300]"
    finally:
        writer.close()


class Recorder:
    """A `WebSocketEndpoint` that keeps what it is told."""

    def __init__(self) -> None:
        self.messages: list[str | bytes] = []

    def ws_message(self, data: str | bytes) -> None:
        self.messages.append(data)

    def ws_refused(self, reason: str, detail: str) -> None:
        return None

    def ws_writable(self, conn: WebSocketConnection) -> None:
        return None

    def ws_lost(self, conn: WebSocketConnection) -> None:
        return None


async def test_take_over_leaves_the_handlers_task_running() -> None:
    """Issue 22, finding 11: taking the transport from aiohttp told aiohttp's
    protocol the connection was lost, which cancels the task running the handler
    (the caller's own): whatever the handler awaited after it was cancelled."""
    after: list[str] = []
    endpoint = Recorder()

    async def handler(request: web.Request) -> web.StreamResponse:
        conn = WebSocketConnection.take_over(request, endpoint, MAX_BYTES)
        assert conn is not None
        conn.write(switching_protocols(request.headers["Sec-WebSocket-Key"]))
        conn.start_reading()
        try:
            await asyncio.sleep(0.05)  # anything the handler still awaits
        except asyncio.CancelledError:
            after.append("cancelled")
            raise
        after.append("went on")
        return DetachedResponse(status=101)

    app = web.Application()
    app.router.add_get("/ws", handler)
    runner = web.AppRunner(app, handler_cancellation=True)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        url = f"http://127.0.0.1:{port}/ws"
        async with aiohttp.ClientSession() as http, http.ws_connect(url) as ws:
            await ws.send_str("hello")
            for _ in range(50):
                if after and endpoint.messages:
                    break
                await asyncio.sleep(0.01)
        assert after == ["went on"]
        assert endpoint.messages == ["hello"]
        assert len(runner.server.connections) == 0  # type: ignore[union-attr]
    finally:
        await runner.cleanup()
