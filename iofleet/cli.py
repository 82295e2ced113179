"""The `iofleet` command: one entry point for the tools platform teams run."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, get_args

import typer
from rich.console import Console

from iofleet.fleet import FleetConfig
from iofleet.loadtest.command import loadtest_command
from iofleet.plan_cli import plan_command
from iofleet.render import (
    DnsDiscovery,
    HaproxyOptions,
    HaproxyStickiness,
    NginxOptions,
    NginxStickiness,
    Timeouts,
    parse_backends,
    render_haproxy,
    render_nginx,
)
from iofleet.rollout_cli import rollout_command
from iofleet.up import run_detached, run_down, run_foreground

app = typer.Typer(
    name="iofleet",
    help="Horizontally scaled Socket.IO: the local fleet and balancer configs.",
    no_args_is_help=True,
    add_completion=False,
)
render_app = typer.Typer(help="Print a balancer config for a set of servers.", no_args_is_help=True)
app.add_typer(render_app, name="render")


@app.callback()
def main() -> None:
    """iofleet user commands."""


BackendsOpt = Annotated[
    list[str] | None,
    typer.Option(
        "--backend",
        "-b",
        help="[NODE_ID=]HOST:PORT[:ADMIN_PORT], repeatable. NODE_ID defaults to node1, node2, ...",
    ),
]
ListenOpt = Annotated[str, typer.Option(help="Public address, HOST:PORT.")]
PingIntervalOpt = Annotated[float, typer.Option(help="Servers' IOFLEET_PING_INTERVAL, seconds.")]
PingTimeoutOpt = Annotated[float, typer.Option(help="Servers' IOFLEET_PING_TIMEOUT, seconds.")]
DrainOpt = Annotated[
    int, typer.Option(help="Drain window (DRAIN_DELAY + DRAIN_SECONDS) an old process may hold.")
]


def _choice(value: str, allowed: tuple[str, ...], option: str) -> str:
    if value not in allowed:
        raise typer.BadParameter(f"{value!r} is not one of {', '.join(allowed)}", param_hint=option)
    return value


@render_app.command("haproxy")
def render_haproxy_command(
    *,
    backend: BackendsOpt = None,
    listen: ListenOpt = "0.0.0.0:8080",
    stickiness: Annotated[
        str, typer.Option(help="cookie (default) | source (address hash) | none")
    ] = "cookie",
    admin_socket: Annotated[
        str, typer.Option(help="Runtime API socket path ('' to leave it out).")
    ] = "/run/haproxy/admin.sock",
    stats_listen: Annotated[str, typer.Option(help="Stats page HOST:PORT ('' for none).")] = "",
    discover: Annotated[
        str, typer.Option(help="Headless Service FQDN: find servers by DNS (in-cluster).")
    ] = "",
    discover_port: Annotated[int, typer.Option(help="Public port of discovered pods.")] = 8000,
    discover_admin_port: Annotated[int, typer.Option(help="Admin port of discovered pods.")] = 9000,
    discover_slots: Annotated[int, typer.Option(help="Most pods to route to.")] = 50,
    ping_interval: PingIntervalOpt = 25,
    ping_timeout: PingTimeoutOpt = 20,
    drain_seconds: DrainOpt = 60,
) -> None:
    """Print an HAProxy config: cookie stickiness, leastconn, /readyz checks, runtime API."""
    allowed: tuple[str, ...] = get_args(HaproxyStickiness)
    discovery = (
        DnsDiscovery(
            hostname=discover,
            port=discover_port,
            admin_port=discover_admin_port,
            slots=discover_slots,
        )
        if discover
        else None
    )
    try:
        options = HaproxyOptions(
            listen=listen,
            backends=parse_backends(backend or []),
            discovery=discovery,
            stickiness=_choice(stickiness, allowed, "--stickiness"),  # type: ignore[arg-type]
            admin_socket=admin_socket or None,
            stats_listen=stats_listen or None,
            timeouts=Timeouts(
                ping_interval_s=ping_interval, ping_timeout_s=ping_timeout, drain_s=drain_seconds
            ),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(render_haproxy(options), nl=False)


@render_app.command("nginx")
def render_nginx_command(
    *,
    backend: BackendsOpt = None,
    listen: ListenOpt = "0.0.0.0:8080",
    stickiness: Annotated[
        str,
        typer.Option(help="sid (default: route by the node id in ?sid=) | ip_hash | hash | none"),
    ] = "sid",
    down: Annotated[
        list[str] | None, typer.Option(help="NODE_ID out of the pool (draining), repeatable.")
    ] = None,
    ping_interval: PingIntervalOpt = 25,
    ping_timeout: PingTimeoutOpt = 20,
    drain_seconds: DrainOpt = 60,
) -> None:
    """Print an nginx.conf: sticky by the node id in the Engine.IO sid, least_conn otherwise."""
    allowed: tuple[str, ...] = get_args(NginxStickiness)
    try:
        options = NginxOptions(
            listen=listen,
            backends=parse_backends(backend or []),
            stickiness=_choice(stickiness, allowed, "--stickiness"),  # type: ignore[arg-type]
            down=frozenset(down or []),
            timeouts=Timeouts(
                ping_interval_s=ping_interval, ping_timeout_s=ping_timeout, drain_s=drain_seconds
            ),
        )
    except ValueError as error:
        raise typer.BadParameter(str(error)) from error
    typer.echo(render_nginx(options), nl=False)


StateDirOpt = Annotated[
    Path, typer.Option(help="Where fleet.json, secrets, logs and balancer files live.")
]


@app.command("up")
def up_command(
    *,
    servers: Annotated[int, typer.Option(min=1, max=50, help="Server processes.")] = 3,
    balancer: Annotated[str, typer.Option(help="haproxy | nginx")] = "haproxy",
    port: Annotated[int, typer.Option(min=1, max=65535, help="Public port on 127.0.0.1.")] = 8080,
    stickiness: Annotated[
        str, typer.Option(help="Balancer stickiness; default cookie (haproxy) / sid (nginx).")
    ] = "",
    state_dir: StateDirOpt = Path(".iofleet"),
    detach: Annotated[bool, typer.Option(help="Return once everything answers.")] = False,
) -> None:
    """Run Redis, N servers and a sticky balancer on this machine (Ctrl-C stops all)."""
    kind = _choice(balancer, ("haproxy", "nginx"), "--balancer")
    if stickiness:
        allowed = get_args(HaproxyStickiness if kind == "haproxy" else NginxStickiness)
        _choice(stickiness, allowed, "--stickiness")
    config = FleetConfig(
        servers=servers,
        balancer=kind,  # type: ignore[arg-type]
        port=port,
        state_dir=state_dir,
        stickiness=stickiness or None,
    )
    console = Console()
    code = run_detached(config, console) if detach else run_foreground(config, console)
    raise typer.Exit(code)


@app.command("down")
def down_command(state_dir: StateDirOpt = Path(".iofleet")) -> None:
    """Stop the fleet `iofleet up` started from this state directory."""
    raise typer.Exit(run_down(state_dir, Console()))


app.command("plan")(plan_command)
app.command("loadtest")(loadtest_command)
app.command("rollout")(rollout_command)
