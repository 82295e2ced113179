"""The public edge against hostile bytes (issue 22), tried on a real `python -m server`:
every head gets an HTTP answer (never a bare close), the same answer whichever way
its bytes are split over reads, and a refused one leaves no Engine.IO session;
what a client makes the server write or buffer stays bounded."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import http.client
import json
import os
import random
import re
import subprocess
import time
from collections.abc import Iterator

import aiohttp
import pytest

from bench.fuzz_edge import fuzz, mutated
from server.net.ws_transport import OP_PING, OP_TEXT
from tests.support.answers import SOCKETS, answer_to, settle_sessions
from tests.support.metrics import metric, metric_or_zero
from tests.support.procs import ServerProcess, make_token
from tests.support.ws_frames import client_frame, open_websocket, read_frame

MAX_MESSAGE = 4_000_000


@pytest.fixture(scope="module")
def edge() -> Iterator[ServerProcess]:
    # Large messages allowed, so that reassembling one in pieces shows its cost.
    server = ServerProcess("edge", env={"IOFLEET_MAX_MESSAGE_BYTES": str(MAX_MESSAGE)}).start()
    try:
        yield server
    finally:
        server.stop()


def head(
    upgrade: str = "Upgrade: websocket\r\n",
    key: str = "",
    version: str = "13",
    host: str = "Host: 127.0.0.1\r\n",
    query: str = "",
    extra: str = "",
) -> bytes:
    key = key or base64.b64encode(os.urandom(16)).decode()
    return (
        f"GET /socket.io/?EIO=4&transport=websocket{query} HTTP/1.1\r\n{host}"
        f"{upgrade}Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
        f"Sec-WebSocket-Version: {version}\r\n{extra}\r\n"
    ).encode("latin-1")


REFUSED = {
    # engineio's own rule is `Upgrade` equal to "websocket" (any case), one field.
    "upgrade-list": (head("Upgrade: websocket, h2c\r\n"), 400),
    "two-upgrade-lines": (head("Upgrade: websocket\r\nUpgrade: h2c\r\n"), 400),
    "upgrade-h2c": (head("Upgrade: h2c\r\n"), 400),
    "no-upgrade": (head(""), 400),
    "bad-key": (head(key="not base64!"), 400),
    "short-key": (head(key="c2hvcnQ="), 400),
    # RFC 6455 4.4: a version the server does not speak gets 426 and the one it does.
    "version-8": (head(version="8"), 426),
    # What aiohttp's parser refuses is refused in one read too (one parser's verdict).
    "control-byte-in-a-value": (head(extra="X-Trace: a\x01b\r\n"), 400),
    "control-byte-in-the-target": (head(query="&t=a\x01b"), 400),
    "del-in-a-value": (head(extra="X-Trace: a\x7fb\r\n"), 400),
    "no-host": (head(host=""), 400),
    "too-many-headers": (head(extra="".join(f"X-{n}: v\r\n" for n in range(200))), 400),
}


@pytest.mark.parametrize("case", REFUSED.keys())
async def test_a_refused_handshake_gets_one_answer_on_either_read_split(
    edge: ServerProcess, case: str
) -> None:
    raw, status = REFUSED[case]
    before = metric(edge.admin_url, SOCKETS)
    whole = await answer_to(edge.port, [raw])
    split = await answer_to(edge.port, [raw[:20], raw[20:]])
    # Never a bare close; aiohttp answers what its parser refuses as HTTP/1.0.
    assert re.match(rb"HTTP/1\.[01] %d " % status, whole), whole
    assert whole.partition(b"\r\n")[0] == split.partition(b"\r\n")[0], (whole, split)
    if status == 426:
        assert b"\r\nsec-websocket-version: 13\r\n" in whole.lower(), whole
    assert await settle_sessions(edge, before) == before, "a refused handshake left a session"


async def test_a_websocket_upgrade_in_any_case_is_taken(edge: ServerProcess) -> None:
    before = metric(edge.admin_url, SOCKETS)
    for chunks in ([head("Upgrade: WebSocket\r\n")], [head()[:20], head()[20:]]):
        answer = await answer_to(edge.port, chunks)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
    assert await settle_sessions(edge, before) == before  # and closed with its client


def rss_bytes(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


async def test_a_client_that_pings_and_never_reads_cannot_grow_the_servers_memory(
    edge: ServerProcess,
) -> None:
    """Each ping asks for a pong; a client that never reads its pongs must be
    stopped (not read, or dropped) once the server's output to it is full."""
    assert edge.process is not None
    answer, reader, writer = await open_websocket(edge.port)
    assert answer.startswith("http/1.1 101"), answer
    assert (await read_frame(reader))[1] == OP_TEXT  # OPEN
    ping = client_frame(OP_PING, b"p" * 125)
    burst = ping * 2000  # 262 KB
    before = rss_bytes(edge.process.pid)
    sent = 0
    deadline = time.monotonic() + 8
    try:
        while sent < 40_000_000 and time.monotonic() < deadline:
            writer.write(burst)
            try:
                await asyncio.wait_for(writer.drain(), 1)
            except (TimeoutError, ConnectionError):
                break  # the server stopped reading us, or dropped us: both bound it
            sent += len(burst)
        grown = rss_bytes(edge.process.pid) - before
    finally:
        writer.transport.abort()
    assert grown < 16_000_000, f"server RSS grew {grown} bytes for {sent} bytes of pings"


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as stat:
        fields = stat.read().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def cpu_for_frame(server: ServerProcess, piece: int) -> float:
    """Server CPU seconds to read one ~4 MB text frame written `piece` bytes at a time."""
    assert server.process is not None
    answer, reader, writer = await open_websocket(server.port)
    assert answer.startswith("http/1.1 101"), answer
    await read_frame(reader)  # OPEN
    data = client_frame(OP_TEXT, b"4" + b"x" * (MAX_MESSAGE - 10_000))
    before = cpu_seconds(server.process.pid)
    try:
        for at in range(0, len(data), piece):
            writer.write(data[at : at + piece])
            await writer.drain()
            if piece < len(data):
                await asyncio.sleep(0.001)  # the server reads each piece on its own
        # Not a Socket.IO packet: once read whole, the server closes the connection.
        with contextlib.suppress(TimeoutError, ConnectionError):
            async with asyncio.timeout(5):
                while await reader.read(65536):
                    pass
        return cpu_seconds(server.process.pid) - before
    finally:
        writer.transport.abort()


async def test_a_frame_split_into_small_pieces_costs_about_what_it_costs_whole(
    edge: ServerProcess,
) -> None:
    """Reassembly is linear: 2,700 reads of 1,500 bytes must not each copy what
    came before (quadratic: about 0.6 s of CPU here; linear: the reads' own cost)."""
    whole = await cpu_for_frame(edge, 1 << 30)
    pieces = await cpu_for_frame(edge, 1500)
    print("cpu", pieces, whole)
    assert pieces < whole + 0.25, (pieces, whole)


async def test_a_long_control_frame_is_refused_on_its_header(edge: ServerProcess) -> None:
    """A ping announcing 1,000 bytes is a protocol error (RFC 6455 5.5: at most
    125) as soon as its header arrives, not after its payload was buffered."""
    answer, reader, writer = await open_websocket(edge.port)
    assert answer.startswith("http/1.1 101"), answer
    await read_frame(reader)  # OPEN
    try:
        writer.write(client_frame(OP_PING, b"x" * 1000)[:8])  # the header and mask only
        await writer.drain()
        _, opcode, payload = await asyncio.wait_for(read_frame(reader), 3)
        assert opcode == 0x8 and int.from_bytes(payload[:2], "big") == 1002, payload
    finally:
        writer.transport.abort()


@pytest.fixture(scope="module")
def impatient() -> Iterator[ServerProcess]:
    """A node with short head and keep-alive timeouts and a backlog of its own."""
    env = {
        "IOFLEET_HEAD_TIMEOUT": "1",
        "IOFLEET_KEEPALIVE_TIMEOUT": "1",
        "IOFLEET_LISTEN_BACKLOG": "77",
    }
    server = ServerProcess("impatient", env=env).start()
    try:
        yield server
    finally:
        server.stop()


async def closed_within(reader: asyncio.StreamReader, seconds: float) -> bytes:
    """Everything the server writes until it closes the connection (fails the
    test if it is still open after `seconds`)."""
    return await asyncio.wait_for(reader.read(), seconds)


@pytest.mark.parametrize(
    "sent",
    [b"", b"GET /socket.io/?EIO=4&transport=websocket HTTP/1.1\r\n"],
    ids=["nothing", "part-of-a-head"],
)
async def test_a_head_that_does_not_arrive_in_time_is_answered_408_and_closed(
    impatient: ServerProcess, sent: bytes
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    try:
        writer.write(sent)
        await writer.drain()
        answer = await closed_within(reader, 4)
    finally:
        writer.close()
    # A partial head is told why; a connection that sent nothing is just closed.
    assert answer.startswith(b"HTTP/1.1 408 ") if sent else answer == b"", answer


async def test_an_idle_keepalive_connection_is_closed_after_the_keepalive_timeout(
    impatient: ServerProcess,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", impatient.port)
    try:
        writer.write(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        await writer.drain()
        response = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert response.startswith(b"HTTP/1.1 "), response
        assert b"connection: close" not in response.lower()  # kept alive, then
        await closed_within(reader, 4)  # closed when idle for the timeout
    finally:
        writer.close()


def test_the_listen_backlog_is_the_setting(impatient: ServerProcess) -> None:
    # For a listening socket `ss` shows the backlog in the Send-Q column.
    listing = subprocess.run(
        ["ss", "-Hltn", f"sport = :{impatient.port}"],
        capture_output=True,
        text=True,
        check=True,
        timeout=10,
    ).stdout.split()
    assert listing[2] == "77", listing


def test_the_client_ip_is_the_last_forwarded_hop_across_header_lines(start_server) -> None:
    """Behind HAProxy a client's own X-Forwarded-For line comes first and the
    balancer's last: the guest-token limit must key on the balancer's hop, so
    changing the first line does not get a client more tokens (issue 24)."""
    server = start_server("xff", IOFLEET_GUEST_TOKENS="true", IOFLEET_TRUST_PROXY_HEADERS="true")
    statuses = []
    for attempt in range(12):  # the default: 10 a minute per address, burst 5
        connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=5)
        try:
            connection.putrequest("POST", "/auth/guest")
            connection.putheader("X-Forwarded-For", f"198.51.100.{attempt}")  # the client's
            connection.putheader("X-Forwarded-For", "10.0.0.5")  # the balancer's
            connection.putheader("Content-Length", "0")
            connection.endheaders()
            statuses.append(connection.getresponse().status)
        finally:
            connection.close()
    assert 429 in statuses, statuses
    assert set(statuses) <= {200, 429}, statuses


async def test_a_flood_of_malformed_requests_is_one_log_line(start_server) -> None:
    """Each is answered 400, and the log says so once per burst (with how many it
    folded), not one ERROR per request a client chose to send."""
    edge = start_server("flood")  # a log of its own
    for attempt in range(40):
        reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
        try:
            writer.write(f"GET /x HTTP/1.1\r\nHost: a\r\nX: {attempt}\x01\r\n\r\n".encode())
            answer = await asyncio.wait_for(reader.read(), 5)
        finally:
            writer.close()
        assert answer.startswith(b"HTTP/1.0 400 "), answer
    await asyncio.sleep(0.2)  # the log line is written
    lines = [entry for entry in edge.log_entries() if entry["logger"] == "aiohttp.server"]
    assert len(lines) == 1, lines
    assert lines[0]["level"] == "warning" and lines[0]["event"] == "http.malformed_request"


async def test_a_failed_upgrade_ending_late_leaves_the_next_upgrade_alone(
    edge: ServerProcess,
) -> None:
    """A first upgrade fails on a malformed probe (counted as malformed: it used to
    be swallowed); its WebSocket is closed, and its TCP connection ends only after
    a second upgrade of the same session succeeded: that end must not close the
    session the second one now carries."""
    malformed = {"reason": "malformed"}
    refused = metric_or_zero(edge.admin_url, "iofleet_events_rejected_total", malformed)
    base = f"127.0.0.1:{edge.port}/socket.io/?EIO=4"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"http://{base}&transport=polling") as response:
            sid = json.loads((await response.text())[1:])["sid"]
        query = f"&transport=websocket&sid={sid}"
        # The first try: a probe that is no Engine.IO packet. Its close frame goes
        # unanswered, so the server drops its TCP connection a second later.
        first = await http.ws_connect(f"ws://{base}{query}", autoping=False, autoclose=False)
        await first.send_str("xprobe")
        assert (await first.receive(timeout=3)).type is aiohttp.WSMsgType.CLOSE
        second = await http.ws_connect(f"ws://{base}{query}", autoping=False)
        await second.send_str("2probe")
        assert (await second.receive_str(timeout=3)) == "3probe"
        await second.send_str("5")
        await asyncio.sleep(1.5)  # the first connection is dropped meanwhile
        await second.send_str("6")  # a NOOP: the session is alive, so no close
        messages = []
        with contextlib.suppress(TimeoutError):
            for _ in range(10):  # at most a ping or two within the second
                messages.append(await second.receive(timeout=1))
                if messages[-1].type is not aiohttp.WSMsgType.TEXT:
                    break
        assert not second.closed and all(m.type is aiohttp.WSMsgType.TEXT for m in messages)
        await first.close()
        await second.close()
    after = metric_or_zero(edge.admin_url, "iofleet_events_rejected_total", malformed)
    assert after == refused + 1


async def test_sessions_that_never_connect_are_capped(start_server) -> None:
    """Engine.IO handshakes without a Socket.IO CONNECT each hold a session: past
    MAX_CONNECTIONS + MAX_UNCONNECTED_SESSIONS a handshake gets 503 (retried by
    stock clients), on the polling and the WebSocket path alike."""
    server = start_server(
        "capped", IOFLEET_MAX_CONNECTIONS="2", IOFLEET_MAX_UNCONNECTED_SESSIONS="3"
    )
    polling = f"{server.url}/socket.io/?EIO=4&transport=polling"
    async with aiohttp.ClientSession() as http:
        for _ in range(5):
            async with http.get(polling) as response:
                assert response.status == 200
        async with http.get(polling) as response:
            assert response.status == 503, await response.text()
    assert (await answer_to(server.port, [head()])).startswith(b"HTTP/1.1 503 ")
    assert metric(server.admin_url, SOCKETS) == 5


async def test_frames_sent_right_behind_the_handshake_are_read(edge: ServerProcess) -> None:
    """A client that writes its Socket.IO CONNECT in the same segment as its head
    (not waiting for the 101) gets it read, not silently dropped."""
    connect = client_frame(OP_TEXT, ("40" + json.dumps({"token": make_token("eager")})).encode())
    reader, writer = await asyncio.open_connection("127.0.0.1", edge.port)
    try:
        writer.write(head() + connect)
        await writer.drain()
        answer = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        assert answer.startswith(b"HTTP/1.1 101 "), answer
        assert (await asyncio.wait_for(read_frame(reader), 5))[2].startswith(b"0{")  # OPEN
        _, _, connected = await asyncio.wait_for(read_frame(reader), 5)
        assert connected.startswith(b"40{"), connected
    finally:
        writer.transport.abort()


async def test_a_client_that_never_reads_large_answers_is_bounded_in_bytes(
    start_server,
) -> None:
    """Forty 400 KB echoes to a client that reads none: far under the packet bound
    (1,024), far over the byte bound (4 MiB) once the kernel's buffers are full:
    it is dropped as a slow consumer, not buffered whole."""
    server = start_server("bytes", IOFLEET_HANDLERS="tests.server.sample_handlers:register")
    answer, reader, writer = await open_websocket(server.port)
    assert answer.startswith("http/1.1 101"), answer
    await read_frame(reader)  # OPEN
    writer.write(client_frame(OP_TEXT, b"40" + json.dumps({"token": make_token("hog")}).encode()))
    assert (await read_frame(reader))[2].startswith(b"40{")
    event = b'42%d["echo","' + b"e" * 400_000 + b'"]'
    try:
        for ack in range(40):
            writer.write(client_frame(OP_TEXT, event % ack))
            with contextlib.suppress(TimeoutError, ConnectionError):
                await asyncio.wait_for(writer.drain(), 1)
        deadline = time.monotonic() + 10
        while metric(server.admin_url, "iofleet_slow_consumers_total") < 1:
            assert time.monotonic() < deadline, "never dropped"
            await asyncio.sleep(0.1)
    finally:
        writer.transport.abort()


async def test_the_protocol_cores_give_one_verdict_for_any_split() -> None:
    """A short seeded run of the edge fuzzer (bench/fuzz_edge.py; the bench run
    is a million inputs): mutated heads through the sniffer and random frame
    streams through the WebSocket core, whole and split, the same verdict each."""
    run = await fuzz(int(os.environ.get("IOFLEET_FUZZ_INPUTS", "4000")), seed=22)
    assert run.crashes == 0 and run.findings == [], run.findings


async def test_mutated_heads_get_the_same_verdict_however_they_are_split(
    impatient: ServerProcess,
) -> None:
    """A fuzz run, seeded and bounded: mutated WebSocket connects, each written
    whole and split at a random point; the same status line both ways, the node
    up, and no session left behind (IOFLEET_FUZZ_CASES for a longer run)."""
    edge = impatient  # a head cut short is answered within a second
    seed = int(os.environ.get("IOFLEET_FUZZ_SEED", "22"))
    cases = int(os.environ.get("IOFLEET_FUZZ_CASES", "40"))
    rng = random.Random(seed)
    before = metric(edge.admin_url, SOCKETS)
    for case in range(cases):
        raw = mutated(rng, head())
        cut = rng.randrange(1, len(raw)) if len(raw) > 1 else 1
        # The status line, or b"" for a close without one (a head cut short gets 408).
        whole = (await answer_to(edge.port, [raw], 0.02)).partition(b"\r\n")[0]
        split = (await answer_to(edge.port, [raw[:cut], raw[cut:]], 0.02)).partition(b"\r\n")[0]
        assert whole == split, (case, raw, cut, whole, split)
    assert await settle_sessions(edge, before) == before
    assert (await answer_to(edge.port, [head()])).startswith(b"HTTP/1.1 101 ")
