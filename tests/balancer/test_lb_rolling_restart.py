"""`iofleet restart` under load loses nothing: a rolling deploy of the local fleet
(real Redis, HAProxy, three servers) with 300 official JS clients in rooms and a
publisher sending 40 messages/s with acks. Every server is replaced in turn; every
acked message reaches every client of its room once and in the stream's order, every
reconnect is recovered, and no client is left disconnected (bench/rolling_deploy.py
is the same run, also with recovery off, printing the figures)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from bench.rolling_deploy import Autoscale, Load, fleet_env, iofleet, local_fleet, rolling_deploy
from iofleet.processes import pid_alive


async def test_a_rolling_restart_loses_no_acked_message(tmp_path: Path) -> None:
    outcome = await rolling_deploy(tmp_path, recovery=True)
    assert not outcome.problems, outcome.restart_output
    assert outcome.restart_output.count("drained and stopped") == 3, outcome.restart_output
    # The publisher kept going through all three replacements (40/s, acked).
    assert outcome.sent >= 40 * outcome.replace_all_s
    # The client fails the ack of an emit in flight when its own connection closes
    # (the publisher's server drains too): that send may or may not have gone out, so
    # only acked messages are owed. No send was refused by a server.
    assert set(outcome.not_acked) <= {"socket has been disconnected"}, outcome.not_acked
    assert outcome.acked >= 0.98 * outcome.sent, outcome.not_acked
    # The drained servers' clients (about two thirds of them, more than once) moved.
    assert len(outcome.reconnects_s) >= 200
    assert outcome.not_recovered == 0
    assert outcome.lost == 0, f"{outcome.lost} of {outcome.expected} deliveries lost"
    assert outcome.duplicates == 0, outcome.duplicate_copies
    assert outcome.out_of_order == 0
    assert outcome.left_disconnected == []
    assert outcome.received == outcome.expected > 300 * outcome.acked / 10


async def test_make_ups_fleet_restarts_under_its_autoscaler_losing_nothing(
    tmp_path: Path,
) -> None:
    """`make up`'s kind of fleet: the local autoscaler on (`--max 6`; target 80, so the
    301 connections want 4 servers and the autoscaler adds one before the restart). The
    restart holds it: it starts and drains nothing of its own, counts each replacement
    once, and afterwards the fleet is the size it wants; the clients lose nothing."""
    outcome = await rolling_deploy(tmp_path, recovery=True, autoscale=Autoscale())
    print(
        f"\nunder the autoscaler: replace all {outcome.replace_all_s:.1f}s, reconnect p50"
        f" {outcome.percentile(0.5):.2f}s p95 {outcome.percentile(0.95):.2f}s,"
        f" {outcome.received}/{outcome.expected} delivered, {outcome.autoscaler}"
    )
    assert not outcome.problems, outcome.restart_output
    scaled = outcome.autoscaler
    assert scaled is not None
    # The autoscaler's own fourth server was replaced too: all four, each once.
    assert scaled.desired_before == 4, scaled
    assert outcome.restart_output.count("drained and stopped") == 4, outcome.restart_output
    assert scaled.holds == 1, scaled
    assert scaled.acted_while_held == [], scaled
    # Synced while held, and never saw a replacement and its old server as two.
    assert scaled.current_while_held, scaled
    assert max(scaled.current_while_held) <= scaled.desired_before, scaled
    assert scaled.desired_after == scaled.current_after == scaled.servers_after == 4, scaled
    assert set(outcome.not_acked) <= {"socket has been disconnected"}, outcome.not_acked
    assert outcome.not_recovered == 0
    assert outcome.lost == 0, f"{outcome.lost} of {outcome.expected} deliveries lost"
    assert outcome.duplicates == 0
    assert outcome.out_of_order == 0
    assert outcome.left_disconnected == []
    assert outcome.received == outcome.expected > 0


@pytest.mark.parametrize("balancer", ["haproxy", "nginx"])
def test_restart_replaces_every_server_and_records_it(tmp_path: Path, balancer: str) -> None:
    """The restart as fleet.json sees it, behind either balancer: new processes only,
    the old ones gone."""
    env = fleet_env(Load())
    state_dir = tmp_path / "state"
    with local_fleet(state_dir, env, recovery=True, balancer=balancer) as before:
        restart = iofleet("restart", "--state-dir", str(state_dir), env=env)
        assert restart.returncode == 0, restart.stdout + restart.stderr
        after = json.loads((state_dir / "fleet.json").read_text())
        old = {s.pid for s in before.servers}
        assert len(after["servers"]) == 3
        assert not old & {s["pid"] for s in after["servers"]}
        assert not any(pid_alive(pid) for pid in old)
        # A second restart takes the slot the first one freed: it can go on forever.
        again = iofleet("restart", "--state-dir", str(state_dir), env=env)
        assert again.returncode == 0, again.stdout + again.stderr


def test_restart_refuses_what_it_cannot_roll_in_one_line(tmp_path: Path) -> None:
    env = fleet_env(Load())
    state_dir = tmp_path / "state"
    nothing = iofleet("restart", "--state-dir", str(state_dir), env=env)
    assert nothing.returncode == 1 and "no running fleet" in nothing.stdout, nothing.stdout
