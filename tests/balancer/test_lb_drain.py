"""Drain one server (balancer lever + the server's own drain) while clients chat."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest

from iofleet.drain import drain_server
from tests.support.cluster import Crowd, start_balancer
from tests.support.jsclient import JsClients
from tests.support.procs import TEST_ADMIN_TOKEN, ServerProcess

ROOM = "drain"
VICTIM = "n1"


@pytest.mark.parametrize("kind", ["haproxy", "nginx"])
async def test_drain_moves_clients_without_failed_handshakes(
    kind: str, servers: list[ServerProcess], js: JsClients, tmp_path: Path
) -> None:
    balancer = await start_balancer(kind, servers, tmp_path)
    loop = asyncio.get_running_loop()
    try:
        crowd = Crowd(js, balancer.url, cookies=kind == "haproxy")
        # Half polling-only (stickiness matters on every request), half upgrading to WebSocket.
        names = [f"c{i}" for i in range(24)]
        for i, name in enumerate(names):
            await crowd.open(name, transports=["polling"] if i % 2 else None)
        await crowd.wait_connected(names)
        await crowd.join(names, ROOM)
        on_victim = [n for n in names if crowd.node(n) == VICTIM]
        staying = [n for n in names if n not in on_victim]
        assert len(on_victim) >= 4, crowd.spread(names)
        chatter = staying[0]
        mark = len(js.messages)

        sent: list[tuple[float, str]] = []
        chatting = True

        async def chat() -> None:
            for k in range(400):  # bounded: 40 s at most
                if not chatting:
                    return
                text = f"m{k}"
                sent.append((loop.time(), text))
                await js.emit(chatter, "chat:message", {"room": ROOM, "text": text})
                await asyncio.sleep(0.1)

        chat_task = asyncio.create_task(chat())
        await asyncio.sleep(0.5)

        # The lever first (no new sessions for the victim), then the server's own drain.
        drain_started = loop.time()
        if kind == "haproxy":
            await balancer.runtime().set_state("iofleet_servers", VICTIM, "drain")
        else:
            await balancer.nginx_balancer().take_out(VICTIM)
        victim = next(s for s in servers if s.node_id == VICTIM)
        await drain_server(victim.admin_url, TEST_ADMIN_TOKEN)

        # New users arrive during the drain; the drained clients come back by themselves.
        newcomers = [f"new{i}" for i in range(8)]
        for i, name in enumerate(newcomers):
            await crowd.open(name, transports=["polling"] if i % 2 else None)
            await asyncio.sleep(0.25)
        joined_at: dict[str, float] = {}
        movers = on_victim + newcomers
        for _ in range(300):  # bounded: 30 s
            for name in movers:
                hellos = crowd.hellos(name)
                back = len(hellos) >= (2 if name in on_victim else 1)
                if back and name not in joined_at:
                    ack = await js.call(name, "room:join", {"room": ROOM})
                    assert ack["ok"], ack
                    joined_at[name] = loop.time()
            if len(joined_at) == len(movers):
                break
            await asyncio.sleep(0.1)
        assert set(joined_at) == set(movers), f"not back: {set(movers) - set(joined_at)}"
        await asyncio.sleep(1.0)
        chatting = False
        await chat_task

        # Every moved client is on another server and gets every message sent after it
        # rejoined; the others never noticed and got everything.
        assert all(crowd.node(n) != VICTIM for n in movers), {n: crowd.hellos(n) for n in movers}
        expected = {n: [t for at, t in sent if at > joined_at[n]] for n in movers}
        expected |= {n: [t for _, t in sent] for n in staying}
        assert all(expected[n] for n in movers)

        def missing() -> dict[str, list[str]]:
            lost = {
                n: [t for t in texts if not crowd.received(n, t)] for n, texts in expected.items()
            }
            return {n: texts for n, texts in lost.items() if texts}

        try:
            await crowd.until(lambda: not missing(), 10, "every expected message heard")
        except TimeoutError:
            details = {
                n: {
                    "lost": lost,
                    "joined_at": joined_at.get(n),
                    "hellos": crowd.hellos(n),
                    "seen": [
                        (m["type"], m.get("reason") or m.get("event"), m.get("t"))
                        for m in js.messages
                        if m.get("client") == n and m.get("event") != "chat:message"
                    ],
                }
                for n, lost in missing().items()
            }
            sent_at = {t: at for at, t in sent}
            pytest.fail(f"messages lost: {details}; sent at: {sent_at}; now {loop.time()}")
        assert [m for m in js.messages[mark:] if m.get("type") == "connect_error"] == []
        assert all(len(crowd.hellos(n)) == 1 for n in staying)
        reasons = {m["reason"] for m in crowd.failures(on_victim) if m["type"] == "disconnect"}
        assert reasons <= {"transport close", "transport error"}, reasons

        assert await asyncio.to_thread(victim.wait_exit, 30) == 0
        back_after = sorted(joined_at[n] - drain_started for n in on_victim)
        # One line of figures for the record (`pytest -s` shows it).
        print(
            f"\n{kind} drain: {len(on_victim)} clients moved, first back after "
            f"{back_after[0]:.2f}s, all back after {back_after[-1]:.2f}s, "
            f"0 failed handshakes, {len(sent)} messages sent, 0 lost"
        )
        if kind == "haproxy":
            runtime = balancer.runtime()
            assert await runtime.wait_sessions_zero("iofleet_servers", VICTIM, within=5)
    finally:
        balancer.stop()
