"""Raw WebSocket frames for tests that speak the wire format themselves: the
handshake, masked client frames (any opcode, fragments, broken ones on purpose)
and reading the server's frames."""

from __future__ import annotations

import asyncio
import base64
import os
import struct

from bench.fuzz_edge import client_frame

__all__ = ["client_frame", "open_websocket", "read_frame", "send_text"]


async def open_websocket(
    port: int,
    path: str = "/socket.io/?EIO=4&transport=websocket",
    extra_headers: str = "",
    key: str | None = None,
) -> tuple[str, asyncio.StreamReader, asyncio.StreamWriter]:
    """A WebSocket opening handshake on 127.0.0.1:`port` (a fresh key unless
    `key` is given): (lower-cased response head, reader, writer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    key = key if key is not None else base64.b64encode(os.urandom(16)).decode()
    writer.write(
        (
            f"GET {path} HTTP/1.1\r\n"
            f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
            f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n{extra_headers}\r\n"
        ).encode()
    )
    head = (await reader.readuntil(b"\r\n\r\n")).decode().lower()
    return head, reader, writer


async def read_frame(reader: asyncio.StreamReader) -> tuple[bool, int, bytes]:
    """(compressed?, opcode, payload) of one server frame (servers never mask)."""
    first, second = await reader.readexactly(2)
    length = second & 0x7F
    if length == 126:
        (length,) = struct.unpack("!H", await reader.readexactly(2))
    elif length == 127:
        (length,) = struct.unpack("!Q", await reader.readexactly(8))
    return bool(first & 0x40), first & 0x0F, await reader.readexactly(length)


async def send_text(writer: asyncio.StreamWriter, text: str) -> None:
    writer.write(client_frame(0x1, text.encode()))
    await writer.drain()
