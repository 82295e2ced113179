"""Fuzz the public edge's protocol cores: request heads and WebSocket frame streams,
each fed whole and split at random points; the verdict must be the same for every
split, and nothing may raise.

- heads: a stock WebSocket connect, mutated (`mutated`), through the
  `HandshakeSniffer` (server/net/ws_accept.py) that every public connection starts
  with: taken as a WebSocket connect (with the same environ), handed to aiohttp
  (with the same bytes), or still waiting for the rest of its head; a head taken
  must be one aiohttp's own parser accepts (tests/server/test_head_verdict.py
  compares the two on a real listener);
- frames: random client frame streams (text, binary, fragments, control frames,
  close codes, bad lengths, unmasked or reserved-bit frames, oversize messages),
  then mutated, through `WebSocketConnection` (server/net/ws_transport.py): the
  same messages, the same refusal and the same bytes written back.

Both cores are sans-I/O (STYLE.md #14): they are fed through a recording transport
in this process: 1,000,000 inputs (seed 22) took 126 s here (the sniffer on
aiohttp's parser), with no finding and no crash. `tests/server/test_edge.py`
runs a short seeded run of this, and the same mutated heads against a real
listener. `python -m bench.fuzz_edge --inputs 1000000` is the bench run; it
prints a progress line every tenth of the run and exits non-zero on a finding.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import random
import struct
import sys
import time
from dataclasses import dataclass, field
from typing import Any

from aiohttp.http import HttpProcessingError

from server.net.ws_accept import HandshakeSniffer, request_parser
from server.net.ws_transport import (
    OP_BINARY,
    OP_CLOSE,
    OP_CONTINUATION,
    OP_PING,
    OP_PONG,
    OP_TEXT,
    WebSocketConnection,
)

PATH = "/socket.io/"
MAX_MESSAGE_BYTES = 4096
# Bytes a mutation inserts: the ones parsers disagree on most.
AWKWARD = [b"\x00", b"\x01", b"\r", b"\n", b"\r\n", b" ", b"\t", b":", b",", b"\x7f", b"\xff", b"a"]


def connect_head(rng: random.Random) -> bytes:
    key = base64.b64encode(rng.randbytes(16)).decode()
    return (
        f"GET {PATH}?EIO=4&transport=websocket HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        "Sec-WebSocket-Version: 13\r\n\r\n"
    ).encode()


def mutated(rng: random.Random, raw: bytes) -> bytes:
    """`raw` with one to three random edits: a byte dropped, an awkward byte put
    in, a line repeated, a case flipped, or the end cut off."""
    data = bytearray(raw)
    for _ in range(rng.randint(1, 3)):
        if not data:
            break
        at = rng.randrange(len(data))
        edit = rng.randrange(5)
        if edit == 0:
            del data[at]
        elif edit == 1:
            data[at:at] = rng.choice(AWKWARD)
        elif edit == 2:
            lines = bytes(data).split(b"\r\n")
            line = rng.randrange(len(lines))
            lines.insert(line, lines[line])
            data = bytearray(b"\r\n".join(lines))
        elif edit == 3:
            data[at : at + 1] = bytes(data[at : at + 1]).swapcase()
        else:
            del data[at:]
    return bytes(data) or b"G"


def splits(rng: random.Random, data: bytes, most: int = 4) -> list[bytes]:
    """`data` cut at up to `most` random points (at least one piece)."""
    if len(data) < 2:
        return [data]
    cuts = sorted(rng.sample(range(1, len(data)), min(most, len(data) - 1, rng.randint(1, most))))
    return [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]


class RecordingTransport(asyncio.Transport):
    """What a core writes and whether it closed; the protocol it hands over to."""

    def __init__(self) -> None:
        super().__init__()
        self.written = bytearray()
        self.closed = False
        self.protocol: Any = None

    def write(self, data: Any) -> None:
        if not self.closed:
            self.written += data

    def close(self) -> None:
        self.closed = True

    def abort(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def pause_reading(self) -> None:
        return None

    def resume_reading(self) -> None:
        return None

    def get_write_buffer_size(self) -> int:
        return 0

    def set_protocol(self, protocol: Any) -> None:
        self.protocol = protocol

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return ("127.0.0.1", 40000) if name == "peername" else default


class AiohttpStandIn:
    """Where the sniffer hands a connection that is not a WebSocket connect."""

    def __init__(self) -> None:
        self.received = bytearray()

    def connection_made(self, transport: Any) -> None:
        return None

    def data_received(self, data: bytes) -> None:
        self.received += data


def head_verdict(pieces: list[bytes]) -> tuple[Any, ...]:
    """What the sniffer made of `pieces`, read one by one."""
    taken: list[dict[str, Any]] = []
    handed: list[AiohttpStandIn] = []

    def http() -> AiohttpStandIn:
        handed.append(AiohttpStandIn())
        return handed[-1]

    def on_connect(environ: dict[str, Any], transport: asyncio.Transport) -> bool:
        taken.append({k: v for k, v in environ.items() if k != "wsgi.errors"})
        return True

    sniffer = HandshakeSniffer(http, PATH, on_connect, head_timeout=60)  # type: ignore[arg-type]
    transport = RecordingTransport()
    sniffer.connection_made(transport)
    for piece in pieces:
        target = transport.protocol or sniffer
        if transport.closed:
            break
        target.data_received(piece)
        if taken:
            break  # what a client sends after a whole connect head is the WebSocket's
    sniffer.connection_lost(None)
    if taken:
        return ("taken", sorted(taken[0].items()))
    if handed:
        return ("aiohttp", bytes(handed[0].received))
    return ("waiting", transport.closed)


def aiohttp_verdict(raw: bytes) -> tuple[str, str]:
    """What aiohttp's own request parser, as its server builds it, makes of `raw`
    read whole: ("refused", the reason it answers with), ("read", "upgrade" or
    ""), or ("incomplete", ""). Called with a running loop."""
    try:
        messages, upgraded, _ = request_parser(asyncio.get_running_loop()).feed_data(raw)
    except HttpProcessingError as error:
        return "refused", error_reason(error.message.encode())
    if not messages:
        return "incomplete", ""
    return "read", "upgrade" if upgraded else ""


def error_reason(text: bytes) -> str:
    """The reason of an error text: aiohttp answers a head its parser refused
    with the error's message (the reason, a colon, then the bytes around the
    error); the bytes differ with the split, the reason does not."""
    return text.partition(b"\n")[0].partition(b":")[0].strip().decode("latin-1")


def fuzz_head(rng: random.Random) -> str | None:
    """One mutated head, whole and split: a finding's description, or None. A
    head taken as a WebSocket connect must be one aiohttp's parser accepts."""
    raw = mutated(rng, connect_head(rng))
    end = raw.find(b"\r\n\r\n")
    if end != -1 and end + 4 < len(raw):
        raw = raw[: end + 4]  # bytes after the head belong to whoever takes it
    whole = head_verdict([raw])
    split = head_verdict(splits(rng, raw))
    if whole != split:
        return f"head {raw!r}: {whole[0]} whole, {split[0]} split"
    if whole[0] == "taken" and aiohttp_verdict(raw)[0] == "refused":
        return f"head {raw!r}: taken, and aiohttp refuses it"
    return None


# --- frames ------------------------------------------------------------------------


def client_frame(
    opcode: int,
    payload: bytes,
    fin: bool = True,
    masked: bool = True,
    rsv: int = 0,
    wide: bool = False,
    mask: bytes | None = None,
) -> bytes:
    """One client frame; clients must mask (`masked=False` breaks that rule, as do
    `rsv` bits; `wide` writes a short length in a longer form than it needs)."""
    size = len(payload)
    first = (0x80 if fin else 0) | rsv << 4 | opcode
    flag = 0x80 if masked else 0
    if size < 126 and not wide:
        header = bytes([first, flag | size])
    elif size < 65536:
        header = bytes([first, flag | 126]) + struct.pack("!H", size)
    else:
        header = bytes([first, flag | 127]) + struct.pack("!Q", size)
    if not masked:
        return header + payload
    mask = mask if mask is not None else os.urandom(4)
    return header + mask + bytes(b ^ mask[i % 4] for i, b in enumerate(payload))


def seeded_frame(rng: random.Random, opcode: int, payload: bytes, **kwargs: Any) -> bytes:
    return client_frame(opcode, payload, mask=rng.randbytes(4), **kwargs)


def random_frame(rng: random.Random) -> bytes:
    kind = rng.randrange(12)
    text = rng.choice([b'42["e"]', b"3", "é".encode(), b"\xff\xfe", b"x" * rng.randrange(300)])
    if kind <= 2:
        return seeded_frame(rng, OP_TEXT, text)
    if kind == 3:
        return seeded_frame(rng, OP_BINARY, rng.randbytes(rng.randrange(200)))
    if kind == 4:  # a fragmented message, perhaps with a ping inside
        ping = seeded_frame(rng, OP_PING, b"p") if rng.random() < 0.5 else b""
        return (
            seeded_frame(rng, OP_TEXT, text[:2], fin=False)
            + ping
            + seeded_frame(rng, OP_CONTINUATION, text[2:])
        )
    if kind == 5:
        return seeded_frame(rng, OP_PING, rng.randbytes(rng.choice([0, 5, 125, 126, 300])))
    if kind == 6:
        return seeded_frame(rng, OP_PONG, rng.randbytes(rng.randrange(10)))
    if kind == 7:
        code = rng.choice([1000, 1001, 1005, 1006, 1015, 2999, 3000, 4999, 5000, 0])
        reason = rng.choice([b"", b"bye", b"\xff"])
        body = rng.choice([b"", b"\x03", struct.pack("!H", code) + reason])
        return seeded_frame(rng, OP_CLOSE, body)
    if kind == 8:
        return seeded_frame(rng, OP_TEXT, text, rsv=rng.randint(1, 7))
    if kind == 9:
        return seeded_frame(rng, OP_TEXT, text, masked=False)
    if kind == 10:
        return seeded_frame(rng, OP_TEXT, text, wide=True)
    return seeded_frame(rng, rng.choice([3, 7, 11, 15]), text)  # reserved opcodes


class Recorder:
    """A `WebSocketEndpoint` that keeps what it is told, in order."""

    def __init__(self) -> None:
        self.events: list[Any] = []

    def ws_message(self, data: str | bytes) -> None:
        self.events.append(("message", data))

    def ws_refused(self, reason: str, detail: str) -> None:
        self.events.append(("refused", reason, detail))

    def ws_writable(self, conn: WebSocketConnection) -> None:
        return None

    def ws_lost(self, conn: WebSocketConnection) -> None:
        self.events.append(("lost",))


def frames_verdict(pieces: list[bytes]) -> tuple[Any, ...]:
    transport = RecordingTransport()
    endpoint = Recorder()
    conn = WebSocketConnection(transport, endpoint, MAX_MESSAGE_BYTES)
    for piece in pieces:
        if transport.closed:
            break
        conn.data_received(piece)
    closed = transport.closed
    conn.connection_lost(None)  # cancels its close timer
    return (endpoint.events, bytes(transport.written), closed)


def fuzz_frames(rng: random.Random) -> str | None:
    stream = b"".join(random_frame(rng) for _ in range(rng.randint(1, 6)))
    if rng.random() < 0.3:
        stream = mutated(rng, stream)
    if rng.random() < 0.05:  # a message over the limit, in pieces
        stream += seeded_frame(rng, OP_BINARY, bytes(MAX_MESSAGE_BYTES + 1))
    whole = frames_verdict([stream])
    split = frames_verdict(splits(rng, stream, most=8))
    return None if whole == split else f"frames {stream[:80]!r}...: whole {whole}, split {split}"


@dataclass
class Run:
    inputs: int = 0
    findings: list[str] = field(default_factory=list)
    crashes: int = 0


async def fuzz(inputs: int, seed: int, progress: bool = False) -> Run:
    """`inputs` inputs (half heads, half frame streams) from `seed`."""
    rng = random.Random(seed)
    run = Run()
    step = max(1, inputs // 10)
    started = time.perf_counter()
    for index in range(inputs):
        try:
            finding = fuzz_head(rng) if index % 2 == 0 else fuzz_frames(rng)
        except Exception as error:  # a core raised: a finding too
            run.crashes += 1
            finding = f"input {index}: {type(error).__name__}: {error}"
        if finding is not None and len(run.findings) < 20:
            run.findings.append(finding)
        run.inputs += 1
        if index % 1000 == 999:
            await asyncio.sleep(0)  # let the cores' close timers run and be cancelled
        if progress and (index + 1) % step == 0:
            took = time.perf_counter() - started
            print(
                f"{index + 1:>9,} inputs  {took:7.1f} s  {(index + 1) / took:8,.0f}/s  "
                f"findings {len(run.findings)}  crashes {run.crashes}",
                flush=True,
            )
    return run


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--inputs", type=int, default=1_000_000)
    parser.add_argument("--seed", type=int, default=22)
    args = parser.parse_args()
    run = asyncio.run(fuzz(args.inputs, args.seed, progress=True))
    print(f"{run.inputs:,} inputs (seed {args.seed}): {len(run.findings)} findings")
    for finding in run.findings:
        print("  " + finding[:400])
    sys.exit(1 if run.findings else 0)


if __name__ == "__main__":
    main()
