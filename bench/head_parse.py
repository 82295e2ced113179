"""What a WebSocket connect's request head costs to parse, by parser (issue 22).

Every public connection's first head is read by `server.net.ws_accept` before
aiohttp: this bench prices the candidates for reading it, per head, on the
heads stock clients send (captured from python-socketio 5.18's client, aiohttp
3.14 underneath, and socket.io-client 4.8 under Node on loopback):

- the sniffer's read of a whole head (`server.net.ws_accept.read_head`: a
  parser made and fed, the connect checks, the environ), and with `--tree DIR`
  the `environ_of_head` and full connect of another checkout's
  `server/net/ws_accept.py` (the hand-written parser before issue 22:
  `git archive <commit> server | tar -x -C DIR`);
- aiohttp's C parser (`aiohttp.http.HttpRequestParser`, llhttp), built as
  aiohttp's `RequestHandler` builds it, fed the head: the parser the requests
  the sniffer leaves to aiohttp go through, so its verdict is aiohttp's;
- `httptools` (MagicStack's llhttp binding), fed the head with callbacks that
  keep the URL and headers; only when it imports (it is no dependency of
  iofleet: `uv pip install --target DIR httptools`, then `PYTHONPATH=DIR`);
- the full connect: a `HandshakeSniffer` made, fed the head, the handshake
  checked (`handshake_refusal`) and the 101 written to a recording transport.

Each figure is a median over `--repeats` of µs per head: the same stock head
`--count` times, and a batch of `--count` different heads (both clients' heads,
each with its own key and port). `python -m bench.head_parse` prints the table.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import importlib
import importlib.util
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench.fuzz_edge import RecordingTransport
from server.net.ws_accept import HandshakeSniffer, read_head, request_parser
from server.net.ws_transport import handshake_refusal, switching_protocols

PATH = "/socket.io/"
PEER = ("127.0.0.1", 40000)
# As captured on loopback (the key and port are replaced per head).
PYTHON_CLIENT = (
    "GET /socket.io/?transport=websocket&EIO=4&t=1796607875.3949072 HTTP/1.1\r\n"
    "Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    "Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\nAccept: */*\r\n"
    "Accept-Encoding: gzip, deflate\r\nUser-Agent: Python/3.11 aiohttp/3.14.5\r\n\r\n"
)
JS_CLIENT = (
    "GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\nSec-WebSocket-Version: 13\r\n"
    "Sec-WebSocket-Key: {key}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n"
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n"
    "Host: 127.0.0.1:{port}\r\n\r\n"
)


def stock_head(template: str, index: int) -> bytes:
    key = base64.b64encode(index.to_bytes(16, "big")).decode()
    return template.format(key=key, port=30000 + index % 30000).encode()


def per_head_us(parse: Callable[[bytes], object], heads: list[bytes]) -> float:
    """The µs per head `parse` takes over `heads`."""
    started = time.perf_counter()
    for head in heads:
        parse(head)
    return (time.perf_counter() - started) / len(heads) * 1e6


def aiohttp_parse(loop: asyncio.AbstractEventLoop) -> Callable[[bytes], object]:
    def parse(head: bytes) -> object:
        messages, upgraded, tail = request_parser(loop).feed_data(head)
        assert upgraded and len(messages) == 1 and not tail
        return messages[0][0]

    return parse


def httptools_parse() -> Callable[[bytes], object] | None:
    try:
        httptools = importlib.import_module("httptools")  # optional: see the docstring
    except ImportError:
        return None

    class Head:
        __slots__ = ("headers", "url")

        def __init__(self) -> None:
            self.url = b""
            self.headers: list[tuple[bytes, bytes]] = []

        def on_url(self, url: bytes) -> None:
            self.url += url

        def on_header(self, name: bytes, value: bytes) -> None:
            self.headers.append((name, value))

    def parse(head: bytes) -> object:
        seen = Head()
        parser = httptools.HttpRequestParser(seen)
        with contextlib.suppress(httptools.HttpParserUpgrade):  # a whole upgrade head
            parser.feed_data(head)
        assert parser.should_upgrade() and parser.get_method() == b"GET"
        return seen

    return parse


def sniffer_read(loop: asyncio.AbstractEventLoop) -> Callable[[bytes], object]:
    """What the sniffer does with a whole head: a parser made, fed, the connect checks."""

    def read(head: bytes) -> object:
        environ = read_head(request_parser(loop), head, head, PATH, PEER)
        assert isinstance(environ, dict)
        return environ

    return read


def tree_module(tree: Path) -> Any:
    """`server/net/ws_accept.py` of another checkout (say, before a change), alone."""
    spec = importlib.util.spec_from_file_location(
        "ws_accept_of_tree", tree / "server/net/ws_accept.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def full_connect(sniffer_class: Any = HandshakeSniffer) -> Callable[[bytes], object]:
    """A sniffer made, fed the head, the handshake checked and the 101 written."""

    def on_connect(environ: dict[str, Any], transport: asyncio.Transport) -> bool:
        if handshake_refusal(environ) is not None:
            return False
        transport.write(switching_protocols(environ["HTTP_SEC_WEBSOCKET_KEY"]))
        return True

    def http() -> Any:
        raise AssertionError("a stock head went to aiohttp")

    def connect(head: bytes) -> object:
        transport = RecordingTransport()
        sniffer = sniffer_class(http, PATH, on_connect, head_timeout=60)
        sniffer.connection_made(transport)
        sniffer.data_received(head)
        sniffer.connection_lost(None)
        assert transport.written.startswith(b"HTTP/1.1 101 ")
        return transport

    return connect


async def measure(count: int, repeats: int, tree: Path | None) -> list[tuple[str, float, float]]:
    """(parser, µs per stock head, µs per head of the batch) for each candidate."""
    loop = asyncio.get_running_loop()
    same = [stock_head(PYTHON_CLIENT, 1)] * count
    batch = [stock_head((PYTHON_CLIENT, JS_CLIENT)[i % 2], i) for i in range(count)]
    candidates: list[tuple[str, Callable[[bytes], object] | None]] = []
    if tree is not None:
        before = tree_module(tree)
        candidates += [
            ("--tree: environ_of_head", lambda h: before.environ_of_head(h, PATH, PEER)),
            ("--tree: full connect", full_connect(before.HandshakeSniffer)),
        ]
    candidates += [
        ("sniffer's read: aiohttp parser + checks + environ", sniffer_read(loop)),
        ("aiohttp HttpRequestParser alone (C, llhttp)", aiohttp_parse(loop)),
        ("httptools HttpRequestParser alone (llhttp)", httptools_parse()),
        ("full connect: sniffer + checks + 101", full_connect()),
    ]
    # Candidates take turns within each repeat, so that the load of a shared
    # machine falls on all of them alike.
    runs: dict[str, tuple[list[float], list[float]]] = {name: ([], []) for name, _ in candidates}
    for _ in range(repeats):
        for name, parse in candidates:
            if parse is not None:
                runs[name][0].append(per_head_us(parse, same))
                runs[name][1].append(per_head_us(parse, batch))
    return [
        (name, statistics.median(runs[name][0]), statistics.median(runs[name][1]))
        if parse is not None
        else (name + ": not installed", float("nan"), float("nan"))
        for name, parse in candidates
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000, help="heads per batch")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument(
        "--tree", type=Path, help="also measure the sniffer of this checkout (before a change)"
    )
    args = parser.parse_args()
    rows = asyncio.run(measure(args.count, args.repeats, args.tree))
    print(f"µs per head, medians of {args.repeats} runs of {args.count:,} heads")
    print(f"| {'parser':<50} | stock head | {args.count:,}-head batch |")
    print(f"| {'-' * 50} | ---------- | ---------------- |")
    for name, same, batch in rows:
        print(f"| {name:<50} | {same:10.2f} | {batch:16.2f} |")


if __name__ == "__main__":
    main()
