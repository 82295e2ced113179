"""Rendered configs pass the balancers' own checkers (`haproxy -c`, `nginx -t`)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.node_ids import resolve_backends
from iofleet.render import (
    Backend,
    DnsDiscovery,
    HaproxyOptions,
    NginxOptions,
    Timeouts,
    render_haproxy,
    render_nginx,
)


def backends(count: int) -> tuple[Backend, ...]:
    return tuple(
        Backend(f"node{i}", "127.0.0.1", 20000 + i, 21000 + i) for i in range(1, count + 1)
    )


def haproxy_check(config: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "haproxy.cfg"
    path.write_text(config)
    return subprocess.run(
        ["haproxy", "-c", "-f", str(path)], check=False, capture_output=True, text=True, timeout=30
    )


def nginx_check(options: NginxOptions, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "nginx.conf"
    path.write_text(render_nginx(options))
    (tmp_path / "temp").mkdir(exist_ok=True)
    return subprocess.run(
        ["nginx", "-t", "-p", str(tmp_path), "-c", str(path), "-e", str(tmp_path / "error.log")],
        check=False,
        capture_output=True,
        text=True,
        timeout=30,
    )


def local_nginx(tmp_path: Path, **fields: object) -> NginxOptions:
    return NginxOptions(
        daemon=False,
        pid_path=str(tmp_path / "nginx.pid"),
        error_log=str(tmp_path / "error.log"),
        temp_dir=str(tmp_path / "temp"),
        **fields,  # type: ignore[arg-type]
    )


@pytest.mark.parametrize("count", [1, 3, 10])
@pytest.mark.parametrize("stickiness", ["cookie", "source", "none"])
def test_haproxy_config_is_valid(count: int, stickiness: str, tmp_path: Path) -> None:
    options = HaproxyOptions(
        listen="127.0.0.1:18080",
        backends=backends(count),
        stickiness=stickiness,  # type: ignore[arg-type]
        admin_socket=str(tmp_path / "admin.sock"),
        stats_listen="127.0.0.1:18081",
    )
    config = render_haproxy(options)
    result = haproxy_check(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert len(re.findall(r"^\s+server node\d+ ", config, re.M)) == count
    assert f"stats socket {tmp_path / 'admin.sock'}" in config
    assert "hard-stop-after 60s" in config


def test_haproxy_cookie_stickiness_balances_handshakes(tmp_path: Path) -> None:
    config = render_haproxy(HaproxyOptions(backends=backends(3), admin_socket=None))
    assert "balance leastconn" in config
    assert "cookie iofleet_node insert indirect nocache" in config
    # A handshake (no sid) is balanced even when it carries an old server's cookie.
    assert "http-request replace-header Cookie" in config
    assert "iofleet_node=[^;]*;?" in config
    assert "server node2 127.0.0.1:20002 check port 21002 cookie node2" in config
    assert "stats socket" not in config
    assert haproxy_check(config, tmp_path).returncode == 0


@pytest.mark.parametrize("nameservers", [(), ("10.96.0.10:53",)])
def test_haproxy_dns_discovery_is_valid(nameservers: tuple[str, ...], tmp_path: Path) -> None:
    options = HaproxyOptions(
        listen=":8080",
        discovery=DnsDiscovery(
            hostname="iofleet-server.iofleet.svc.cluster.local", slots=30, nameservers=nameservers
        ),
        admin_socket=str(tmp_path / "admin.sock"),
    )
    config = render_haproxy(options)
    result = haproxy_check(config, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert (
        "server-template srv 30 iofleet-server.iofleet.svc.cluster.local:8000 check port 9000"
        in config
    )
    assert "cookie iofleet_node insert indirect nocache httponly dynamic" in config
    assert ("parse-resolv-conf" in config) == (not nameservers)


@pytest.mark.parametrize("count", [1, 3, 10])
@pytest.mark.parametrize("stickiness", ["sid", "ip_hash", "hash", "none"])
def test_nginx_config_is_valid(count: int, stickiness: str, tmp_path: Path) -> None:
    options = local_nginx(
        tmp_path, listen="127.0.0.1:18082", backends=backends(count), stickiness=stickiness
    )
    result = nginx_check(options, tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    config = render_nginx(options)
    assert len(re.findall(r"^\s+server 127\.0\.0\.1:\d+ max_fails", config, re.M)) == count
    assert "worker_shutdown_timeout 60s;" in config
    assert ("map $arg_sid" in config) == (stickiness == "sid")


def test_nginx_down_and_maint(tmp_path: Path) -> None:
    options = local_nginx(
        tmp_path,
        backends=backends(3),
        down=frozenset({"node1"}),
        maint=frozenset({"node3"}),
    )
    assert nginx_check(options, tmp_path).returncode == 0
    config = render_nginx(options)
    # Drained: out of the pool, but its sessions still reach it through the sid map.
    assert "server 127.0.0.1:20001 max_fails=1 fail_timeout=10s down;" in config
    assert "node1 iofleet_node_node1;" in config
    # Maintenance: gone from both.
    assert "20003" not in config
    assert "node3 iofleet_node_node3" not in config


def test_timeouts_exceed_ping_interval_plus_timeout() -> None:
    timeouts = Timeouts(ping_interval_s=25, ping_timeout_s=20)
    assert timeouts.idle_s > 45
    config = render_haproxy(HaproxyOptions(backends=backends(1), timeouts=timeouts))
    for name in ("client", "server", "tunnel"):
        value = re.search(rf"timeout {name} (\d+)s", config)
        assert value is not None and int(value.group(1)) > 45
    config = render_nginx(NginxOptions(backends=backends(1), timeouts=Timeouts(5, 3)))
    assert "proxy_read_timeout 23s;" in config


DIRECTIVES = re.compile(
    r"^\s*(timeout \w|cookie |balance |http-request replace-header Cookie|hash-type"
    r"|hard-stop-after|retry-on"
    r"|option (persist|redispatch|httpchk)|stats socket|server-template"
    r"|ip_hash|hash \$|least_conn|worker_shutdown_timeout|proxy_\w+_timeout|map \$arg_sid"
    r"|proxy_next_upstream |proxy_buffering)"
)


@pytest.mark.parametrize(
    "config",
    [
        render_haproxy(HaproxyOptions(backends=backends(2))),
        render_haproxy(HaproxyOptions(backends=backends(2), stickiness="source")),
        render_haproxy(HaproxyOptions(discovery=DnsDiscovery("svc.example"))),
        render_nginx(NginxOptions(backends=backends(2))),
        render_nginx(NginxOptions(backends=backends(2), stickiness="ip_hash")),
        render_nginx(NginxOptions(backends=backends(2), stickiness="hash")),
    ],
)
def test_every_stickiness_and_timeout_directive_has_a_reason(config: str) -> None:
    """STYLE #10: such a directive sits in a block of lines that opens with a comment."""
    lines = config.splitlines()
    for index, line in enumerate(lines):
        if not DIRECTIVES.match(line):
            continue
        above = index - 1
        while above >= 0 and lines[above].strip() and not lines[above].strip().startswith("#"):
            above -= 1
        assert above >= 0 and lines[above].strip().startswith("#"), f"no reason for: {line}"


def parse_backends_offline(specs: list[str]) -> tuple[Backend, ...]:
    return resolve_backends(specs, ask_servers=False)


def test_backend_specs() -> None:
    assert parse_backends_offline(
        ["10.0.0.5:8000:9000", "s2=host.example:8001", "[::1]:8002:9002"]
    ) == (
        Backend("node1", "10.0.0.5", 8000, 9000),
        Backend("s2", "host.example", 8001, None),
        Backend("node3", "::1", 8002, 9002),
    )
    assert Backend("a", "::1", 1).address == "[::1]:1"
    for bad in ["nohost", "h:port", "bad name=h:1", "h:70000"]:
        with pytest.raises(ValueError):
            parse_backends_offline([bad])
    with pytest.raises(ValueError, match="duplicate"):
        NginxOptions(backends=parse_backends_offline(["a=h:1", "a=h:2"]))
    with pytest.raises(ValueError, match="at least one"):
        HaproxyOptions()
    with pytest.raises(ValueError, match="unknown"):
        NginxOptions(backends=backends(1), down=frozenset({"nope"}))


def test_cli_render_prints_the_config(tmp_path: Path) -> None:
    runner = CliRunner()
    result = runner.invoke(
        app,
        [
            "render", "haproxy", "--listen", "127.0.0.1:18080",
            "--backend", "a=127.0.0.1:8001:9001", "--backend", "127.0.0.1:8002:9002",
            "--admin-socket", str(tmp_path / "admin.sock"), "--no-ask-servers",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "server a 127.0.0.1:8001 check port 9001 cookie a" in result.output
    assert "server node2 127.0.0.1:8002 check port 9002 cookie node2" in result.output
    assert haproxy_check(result.output, tmp_path).returncode == 0

    result = runner.invoke(
        app,
        ["render", "haproxy", "-b", "a=127.0.0.1:8001:9001", "--no-ask-servers",
         "--spare-slot", "b", "--spare-slot", "c", "--admin-socket", ""],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "server c 127.0.0.1:1 disabled check cookie c" in result.output
    assert "use-server c if { urlp(sid) -m beg c. }" in result.output
    assert haproxy_check(result.output, tmp_path).returncode == 0
    result = runner.invoke(app, ["render", "haproxy", "-b", "a=h:1", "--spare-slot", "a"])
    assert result.exit_code == 2 and "repeat" in result.output

    result = runner.invoke(
        app,
        ["render", "nginx", "--listen", "127.0.0.1:18082", "-b", "x=127.0.0.1:8001:9001",
         "-b", "y=127.0.0.1:8002", "--down", "y", "--ping-interval", "5", "--ping-timeout", "3",
         "--no-ask-servers"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "x iofleet_node_x;" in result.output
    assert "server 127.0.0.1:8002 max_fails=1 fail_timeout=10s down;" in result.output
    assert "proxy_read_timeout 23s;" in result.output

    result = runner.invoke(app, ["render", "nginx", "-b", "x=h:1", "--stickiness", "cookie"])
    assert result.exit_code != 0
    assert "--stickiness" in result.output

    result = runner.invoke(
        app,
        ["render", "haproxy", "--discover", "svc.ns.svc.cluster.local", "--discover-slots", "7"],
    )
    assert result.exit_code == 0, result.output
    assert "server-template srv 7 svc.ns.svc.cluster.local:8000 check port 9000" in result.output
