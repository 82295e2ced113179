"""Socket.IO connections as bare asyncio protocols: the fan-out benchmark's load.

A full client per connection (or even aiohttp's WebSocket with a reader task per
connection) costs the generator more CPU per message than a fast server spends
delivering it, so the generator would measure itself. Here each connection is an
`asyncio.Protocol` that does the HTTP upgrade by hand, parses server frames
(unmasked, per RFC 6455) in `data_received`, and sends client frames masked with
the all-zero key (valid framing; the payload bytes stay as they are). No task and
no timer per connection; a delivery costs a frame header parse and a counter.

It speaks only what the benchmark needs: Engine.IO v4 open/ping/pong, Socket.IO
CONNECT to `/`, events, events with acks, and acks.
"""

from __future__ import annotations

import asyncio
import base64
import os
import time
from collections.abc import Callable
from typing import Any

import orjson

UPGRADE_REQUEST = (
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"
    "Host: {host}:{port}\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: {key}\r\n"
    "Sec-WebSocket-Version: 13\r\n\r\n"
)
OPCODE_TEXT = 0x1
OPCODE_CLOSE = 0x8
OPCODE_PING = 0x9
ZERO_MASK = b"\x00\x00\x00\x00"


def client_frame(payload: bytes, opcode: int = OPCODE_TEXT) -> bytes:
    """A masked client frame (mask key 0: the payload needs no XOR)."""
    size = len(payload)
    if size < 126:
        header = bytes((0x80 | opcode, 0x80 | size))
    elif size < 65536:
        header = bytes((0x80 | opcode, 0x80 | 126)) + size.to_bytes(2, "big")
    else:
        header = bytes((0x80 | opcode, 0x80 | 127)) + size.to_bytes(8, "big")
    return header + ZERO_MASK + payload


PONG_FRAME = client_frame(b"3")
CONNECT_FRAME = client_frame(b"40")


class Tally:
    """What all connections of one generator received, counted as it arrives."""

    def __init__(self, event: bytes) -> None:
        # Matched against the start of an event packet: `42["<event>"`.
        self.prefix = b'42["' + event + b'"'
        self.count = 0
        self.target = 0
        self.reached = asyncio.Event()

    def expect(self, more: int) -> None:
        self.target = self.count + more
        self.reached.clear()

    def hit(self, packet: bytes) -> None:
        self.count += 1
        if self.count >= self.target:
            self.reached.set()


class LatencyTally(Tally):
    """A Tally that also records each delivery's latency: the sender puts `clock()`
    in the message's `text` (`time.perf_counter_ns` within one process; the wall clock,
    `time.time_ns`, when the sender is another process on the same machine)."""

    TEXT = b'"text":"'

    def __init__(self, event: bytes, clock: Callable[[], int] = time.perf_counter_ns) -> None:
        super().__init__(event)
        self.clock = clock
        self.latencies_ms: list[float] = []

    def hit(self, packet: bytes) -> None:
        now = self.clock()
        start = packet.find(self.TEXT)
        if start >= 0:
            start += len(self.TEXT)
            sent = packet[start : packet.index(b'"', start)]
            if sent.isdigit():
                self.latencies_ms.append((now - int(sent)) / 1e6)
        super().hit(packet)


class RawSocket(asyncio.Protocol):
    def __init__(self, tally: Tally, host: str, port: int) -> None:
        self.tally = tally
        self.host = host
        self.port = port
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.upgraded = False
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()
        self.acks: dict[int, asyncio.Future[Any]] = {}
        self.next_ack = 0

    # --- asyncio.Protocol -----------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        key = base64.b64encode(os.urandom(16)).decode()
        transport.write(UPGRADE_REQUEST.format(host=self.host, port=self.port, key=key).encode())

    def connection_lost(self, exc: Exception | None) -> None:
        reason = ConnectionError(f"connection lost: {exc}")
        if not self.ready.done():
            self.ready.set_exception(reason)
        for future in self.acks.values():
            if not future.done():
                future.set_exception(reason)
        self.acks.clear()
        if not self.closed.done():
            self.closed.set_result(None)

    def data_received(self, data: bytes) -> None:
        buffer = self.buffer
        buffer += data
        if not self.upgraded:
            end = buffer.find(b"\r\n\r\n")
            if end < 0:
                return
            if b" 101 " not in buffer[: buffer.find(b"\r\n")]:
                self._fail(f"upgrade refused: {bytes(buffer[:80])!r}")
                return
            del buffer[: end + 4]
            self.upgraded = True
        pos = 0
        size = len(buffer)
        while size - pos >= 2:
            length = buffer[pos + 1] & 0x7F
            start = pos + 2
            if length == 126:
                if size - pos < 4:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 4], "big")
                start = pos + 4
            elif length == 127:
                if size - pos < 10:
                    break
                length = int.from_bytes(buffer[pos + 2 : pos + 10], "big")
                start = pos + 10
            end = start + length
            if end > size:
                break
            opcode = buffer[pos] & 0x0F
            if opcode == OPCODE_TEXT:
                self._packet(bytes(buffer[start:end]))
            elif opcode == OPCODE_CLOSE:
                self._fail("server closed the WebSocket")
                return
            pos = end
        if pos:
            del buffer[:pos]

    # --- Engine.IO / Socket.IO --------------------------------------------------

    def _packet(self, packet: bytes) -> None:
        if packet.startswith(self.tally.prefix):
            self.tally.hit(packet)
        elif packet == b"2":
            self._write(PONG_FRAME)
        elif packet.startswith(b"43"):
            bracket = packet.index(b"[")
            future = self.acks.pop(int(packet[2:bracket]), None)
            if future is not None and not future.done():
                future.set_result(orjson.loads(packet[bracket:]))
        elif packet.startswith(b"0{"):
            self._write(CONNECT_FRAME)
        elif packet.startswith(b"40"):
            if not self.ready.done():
                self.ready.set_result(None)
        elif packet.startswith(b"44"):
            self._fail(f"connect refused: {packet[:120]!r}")

    def _write(self, frame: bytes) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(frame)

    def _fail(self, reason: str) -> None:
        if not self.ready.done():
            self.ready.set_exception(ConnectionError(reason))
        if self.transport is not None:
            self.transport.close()

    def emit(self, event: str, data: Any) -> None:
        self._write(client_frame(b"42" + orjson.dumps([event, data])))

    def call(self, event: str, data: Any) -> asyncio.Future[Any]:
        """Emit with an ack; the future gets the ack's arguments."""
        self.next_ack += 1
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self.acks[self.next_ack] = future
        self._write(client_frame(f"42{self.next_ack}".encode() + orjson.dumps([event, data])))
        return future

    def close(self) -> None:
        if self.transport is not None and not self.transport.is_closing():
            self.transport.write(client_frame(b"", OPCODE_CLOSE))
            self.transport.close()


async def connect(host: str, port: int, tally: Tally, timeout: float = 30.0) -> RawSocket:
    loop = asyncio.get_running_loop()
    _, protocol = await asyncio.wait_for(
        loop.create_connection(lambda: RawSocket(tally, host, port), host, port), timeout
    )
    await asyncio.wait_for(protocol.ready, timeout)
    return protocol
