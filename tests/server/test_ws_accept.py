"""WebSocket connects taken before aiohttp (server/net/ws_accept.py): which heads are
taken, and that the application sees the same handshake either way."""

from __future__ import annotations

import asyncio
import base64
import json
import os

import pytest

from bench.fuzz_edge import aiohttp_verdict
from server.eio.engine import http_response, query_fields
from server.net.ws_accept import MAX_HEAD_BYTES, Incomplete, read_head, request_parser
from server.node.public import SOCKETIO_PATH
from tests.support.procs import make_token
from tests.support.ws_frames import read_frame, send_text

PEER = ("127.0.0.1", 40000)
CONNECT_HEAD = (
    "GET /socket.io/?EIO=4&transport=websocket&team=a%20b HTTP/1.1\r\n"
    "Host: 127.0.0.1:8080\r\n"
    "Upgrade: websocket\r\n"
    "Connection: Upgrade\r\n"
    "Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: 13\r\n"
    "X-Trace: one\r\n"
    "x-trace: two\r\n"
    "\r\n"
)


async def environ_of_head(data: bytes, path: str, peer: object) -> dict[str, object] | None:
    """What the sniffer makes of `data` read in one piece: the environ of the
    WebSocket connect it takes, or None (left to aiohttp, or incomplete)."""
    environ = read_head(request_parser(asyncio.get_running_loop()), data, data, path, peer)
    return None if environ is Incomplete.HEAD else environ


async def test_a_whole_connect_head_becomes_the_environ_engineio_reads() -> None:
    environ = await environ_of_head(CONNECT_HEAD.encode(), SOCKETIO_PATH, PEER)
    assert environ is not None
    assert environ["REQUEST_METHOD"] == "GET"
    assert environ["PATH_INFO"] == SOCKETIO_PATH
    assert environ["QUERY_STRING"] == "EIO=4&transport=websocket&team=a%20b"
    assert environ["HTTP_UPGRADE"] == "websocket"
    assert environ["HTTP_SEC_WEBSOCKET_KEY"] == "dGhlIHNhbXBsZSBub25jZQ=="
    assert environ["HTTP_X_TRACE"] == "one,two"  # repeated fields joined, as engineio does
    assert (environ["REMOTE_ADDR"], environ["REMOTE_PORT"]) == ("127.0.0.1", "40000")
    assert environ["wsgi.url_scheme"] == "http"
    assert "aiohttp.request" not in environ
    six = await environ_of_head(CONNECT_HEAD.encode(), SOCKETIO_PATH, ("::1", 5, 0, 0))
    assert six is not None and (six["REMOTE_ADDR"], six["REMOTE_PORT"]) == ("::1", "5")


# Whole heads aiohttp's parser reads, that are no WebSocket connect of ours: aiohttp's.
NOT_OURS = {
    "split-head": CONNECT_HEAD[:-2],
    "bytes-after-the-head": CONNECT_HEAD + "x",
    "http-1.0": CONNECT_HEAD.replace("HTTP/1.1", "HTTP/1.0", 1),
    "post": CONNECT_HEAD.replace("GET", "POST", 1),
    "other-path": CONNECT_HEAD.replace("/socket.io/", "/other/", 1),
    "encoded-path": CONNECT_HEAD.replace("/socket.io/", "/socket%2Eio/", 1),
    "absolute-form": CONNECT_HEAD.replace("/socket.io/", "http://a/socket.io/", 1),
    "a-body": CONNECT_HEAD.replace("X-Trace: one", "Content-Length: 0"),
    "chunked": CONNECT_HEAD.replace("X-Trace: one", "Transfer-Encoding: chunked"),
}
# Heads aiohttp's parser refuses (aiohttp answers them 400).
REFUSED_BY_AIOHTTP = {
    "folded-line": CONNECT_HEAD.replace("X-Trace: one\r\n", "X-Trace: one\r\n  more\r\n"),
    "bare-lf": CONNECT_HEAD.replace("X-Trace: one\r\n", "X-Trace: one\n"),
    "bare-cr": CONNECT_HEAD.replace("X-Trace: one\r\n", "X-Trace: o\rne\r\n"),
    "nul": CONNECT_HEAD.replace("one", "o\x00ne"),
    "control-byte": CONNECT_HEAD.replace("one", "o\x01ne"),
    "space-in-name": CONNECT_HEAD.replace("X-Trace:", "X Trace:", 1),
    "no-colon": CONNECT_HEAD.replace("X-Trace: one", "X-Trace one"),
    "too-long": CONNECT_HEAD.replace("X-Trace: one", "X-Trace: " + "o" * MAX_HEAD_BYTES),
    # Fields aiohttp allows once: today's hand parser joined them and took the head.
    "two-user-agents": CONNECT_HEAD.replace("X-Trace: one", "User-Agent: a\r\nUser-Agent: b"),
    "two-hosts": CONNECT_HEAD.replace("X-Trace: one", "Host: 127.0.0.2"),
    "no-host": CONNECT_HEAD.replace("Host: 127.0.0.1:8080\r\n", ""),
    # The old WebSocket draft's key, which aiohttp refuses outright.
    "draft-key": CONNECT_HEAD.replace("X-Trace: one", "Sec-WebSocket-Key1: 1"),
    "too-many-fields": CONNECT_HEAD.replace(
        "X-Trace: one", "\r\n".join(f"X-{n}: v" for n in range(130))
    ),
}


@pytest.mark.parametrize("head", NOT_OURS.values(), ids=NOT_OURS.keys())
async def test_what_is_no_connect_of_ours_is_left_to_aiohttp(head: str) -> None:
    assert aiohttp_verdict(head.encode("latin-1"))[0] != "refused"
    assert await environ_of_head(head.encode("latin-1"), SOCKETIO_PATH, PEER) is None


@pytest.mark.parametrize("head", REFUSED_BY_AIOHTTP.values(), ids=REFUSED_BY_AIOHTTP.keys())
async def test_what_aiohttps_parser_refuses_is_left_to_aiohttp(head: str) -> None:
    assert aiohttp_verdict(head.encode("latin-1"))[0] == "refused"
    assert await environ_of_head(head.encode("latin-1"), SOCKETIO_PATH, PEER) is None


async def test_what_aiohttps_parser_reads_is_read_alike() -> None:
    """Leniencies of aiohttp's parser are the sniffer's too (one verdict): two
    spaces after the method, a tab around a value, a value of obs-text."""
    head = CONNECT_HEAD.replace("GET ", "GET  ", 1).replace("X-Trace: one", "X-Trace:\t\xe9 ")
    environ = await environ_of_head(head.encode("latin-1"), SOCKETIO_PATH, PEER)
    assert environ is not None
    assert environ["HTTP_X_TRACE"] == "\udce9,two"  # as aiohttp decodes it: surrogateescape


def test_query_fields_first_value_percent_decoded() -> None:
    assert query_fields("EIO=4&transport=websocket&EIO=3&t=a%20b+c&flag&") == {
        "EIO": "4",
        "transport": "websocket",
        "t": "a b c",
        "flag": "",
        "": "",
    }


def test_an_engineio_refusal_is_written_as_a_closing_http_response() -> None:
    raw = http_response(
        {
            "status": "401 UNAUTHORIZED",
            "headers": [("Content-Type", "text/plain")],
            "response": "no",
        }
    )
    assert raw == (
        b"HTTP/1.1 401 UNAUTHORIZED\r\nContent-Type: text/plain\r\n"
        b"Content-Length: 2\r\nConnection: close\r\n\r\nno"
    )


async def handshake_seen(port: int, chunks: list[bytes]) -> tuple[int, dict[str, object]]:
    """Open a WebSocket with its head written as `chunks` (a pause between them),
    connect to Socket.IO and ask the app (tests/server/sample_handlers.py) what
    it sees of the handshake: (the client's own port, that answer)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        for index, chunk in enumerate(chunks):
            if index:
                await asyncio.sleep(0.2)  # the server reads the first part alone
            writer.write(chunk)
            await writer.drain()
        head = (await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)).decode()
        assert head.startswith("HTTP/1.1 101"), head
        _, _, opening = await read_frame(reader)
        assert opening.startswith(b"0{")
        await send_text(writer, "40" + json.dumps({"token": make_token("sniffed")}))
        _, _, answer = await read_frame(reader)
        assert answer.startswith(b"40{"), answer
        await send_text(writer, '421["handshake"]')
        while True:  # past the greeting
            _, _, payload = await asyncio.wait_for(read_frame(reader), 5)
            if payload.startswith(b"431"):
                return writer.get_extra_info("sockname")[1], json.loads(payload[3:])[0]
    finally:
        writer.close()


def connect_head(port: int) -> bytes:
    key = base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /socket.io/?EIO=4&transport=websocket&team=a%20b HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nX-Trace: t1\r\n\r\n"
    ).encode()


async def test_the_app_sees_the_same_handshake_on_either_path(start_server) -> None:
    server = start_server("sniff", IOFLEET_HANDLERS="tests.server.sample_handlers:register")
    head = connect_head(server.port)
    expected = {"remote_addr": "127.0.0.1", "query": "EIO=4&transport=websocket&team=a%20b"}
    expected["x_trace"] = "t1"

    # In one read, or split over two: read whole and taken before aiohttp.
    port, seen = await handshake_seen(server.port, [head])
    assert seen == {**expected, "remote_port": str(port), "via_aiohttp": False}
    port, seen = await handshake_seen(server.port, [head[:30], head[30:]])
    assert seen == {**expected, "remote_port": str(port), "via_aiohttp": False}
    # A head the sniffer leaves to aiohttp (one announcing a body): the app sees the same.
    unusual = head.replace(b"X-Trace: t1\r\n", b"X-Trace: t1\r\nContent-Length: 0\r\n")
    port, seen = await handshake_seen(server.port, [unusual])
    assert seen == {**expected, "remote_port": str(port), "via_aiohttp": True}


async def test_what_is_not_http_is_answered_by_aiohttp_and_the_node_serves_on(
    start_server,
) -> None:
    server = start_server("sniff-junk", IOFLEET_HANDLERS="tests.server.sample_handlers:register")
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    try:
        writer.write(b"\x16\x03\x01 not http at all\r\n\r\n")  # a TLS hello, say
        answer = await asyncio.wait_for(reader.read(1024), 5)
        status_line, _, _ = answer.partition(b"\r\n")
        assert status_line.endswith(b" 400 Bad Request"), answer
        assert answer.endswith(b"Received HTTPS traffic on an HTTP port"), answer  # aiohttp's
    finally:
        writer.close()
    _, seen = await handshake_seen(server.port, [connect_head(server.port)])
    assert seen["via_aiohttp"] is False
