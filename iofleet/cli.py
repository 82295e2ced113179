"""The `iofleet` command: one entry point for the tools platform teams run."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn, get_args

import typer
from rich.console import Console

from iofleet import images
from iofleet.fleet import FleetConfig
from iofleet.fleet_state import DEFAULT_STATE_DIR
from iofleet.loadtest.command import loadtest_command
from iofleet.node_ids import resolve_backends
from iofleet.plan_cli import plan_command
from iofleet.regions_up import down_regions, run_regions
from iofleet.render import (
    RELOAD_GRACE_S,
    DnsDiscovery,
    HaproxyOptions,
    HaproxyStickiness,
    NginxOptions,
    NginxStickiness,
    Timeouts,
    render_haproxy,
    render_nginx,
)
from iofleet.rollout_cli import rollout_command
from iofleet.up import AutoscaleConfig, run_detached, run_down, run_drain, run_foreground
from server.contract import ADMIN_PORT, PING_INTERVAL_SECONDS, PING_TIMEOUT_SECONDS, PUBLIC_PORT

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
        help="[NODE_ID=]HOST:PORT[:ADMIN_PORT], repeatable. With ADMIN_PORT the node id is"
        " read from the server's /admin/status (a given NODE_ID must match it); otherwise"
        " NODE_ID defaults to node1, node2, ...",
    ),
]
AskServersOpt = Annotated[
    bool,
    typer.Option(
        help="Read node ids from the servers' /admin/status (backends with an ADMIN_PORT)."
    ),
]
ListenOpt = Annotated[str, typer.Option(help="Public address, HOST:PORT.")]
PingIntervalOpt = Annotated[float, typer.Option(help="Servers' IOFLEET_PING_INTERVAL, seconds.")]
PingTimeoutOpt = Annotated[float, typer.Option(help="Servers' IOFLEET_PING_TIMEOUT, seconds.")]
DrainOpt = Annotated[
    int,
    typer.Option(
        help="Seconds an old balancer process keeps its WebSockets after a reload;"
        " at least the servers' DRAIN_DELAY + DRAIN_SECONDS."
    ),
]


def _fail(message: str) -> NoReturn:
    """One line on stderr, exit 2: what `iofleet render` does with any bad input."""
    typer.echo(f"iofleet render: {message}", err=True)
    raise typer.Exit(2)


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
    discover_port: Annotated[
        int, typer.Option(help="Public port of discovered pods.")
    ] = PUBLIC_PORT,
    discover_admin_port: Annotated[
        int, typer.Option(help="Admin port of discovered pods.")
    ] = ADMIN_PORT,
    discover_slots: Annotated[int, typer.Option(help="Most pods to route to.")] = 50,
    maxconn: Annotated[
        int,
        typer.Option(
            min=0,
            help="Global maxconn; 0 (default) lets HAProxy derive it from its fd limit"
            " (a fixed value needs a limit of about twice it).",
        ),
    ] = 0,
    spare_slot: Annotated[
        list[str] | None,
        typer.Option(
            help="NODE_ID of a server that may start later: a slot in maintenance, filled"
            " through the runtime API without a reload. Repeatable."
        ),
    ] = None,
    ask_servers: AskServersOpt = True,
    ping_interval: PingIntervalOpt = PING_INTERVAL_SECONDS,
    ping_timeout: PingTimeoutOpt = PING_TIMEOUT_SECONDS,
    drain_seconds: DrainOpt = RELOAD_GRACE_S,
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
            backends=resolve_backends(backend or [], ask_servers=ask_servers),
            discovery=discovery,
            stickiness=_choice(stickiness, allowed, "--stickiness"),  # type: ignore[arg-type]
            admin_socket=admin_socket or None,
            stats_listen=stats_listen or None,
            maxconn=maxconn or None,
            spare_slots=tuple(spare_slot or ()),
            timeouts=Timeouts(
                ping_interval_s=ping_interval, ping_timeout_s=ping_timeout, drain_s=drain_seconds
            ),
        )
    except ValueError as error:
        _fail(str(error))
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
    ask_servers: AskServersOpt = True,
    ping_interval: PingIntervalOpt = PING_INTERVAL_SECONDS,
    ping_timeout: PingTimeoutOpt = PING_TIMEOUT_SECONDS,
    drain_seconds: DrainOpt = RELOAD_GRACE_S,
) -> None:
    """Print an nginx.conf: sticky by the node id in the Engine.IO sid, least_conn otherwise."""
    allowed: tuple[str, ...] = get_args(NginxStickiness)
    try:
        options = NginxOptions(
            listen=listen,
            backends=resolve_backends(backend or [], ask_servers=ask_servers),
            stickiness=_choice(stickiness, allowed, "--stickiness"),  # type: ignore[arg-type]
            down=frozenset(down or []),
            timeouts=Timeouts(
                ping_interval_s=ping_interval, ping_timeout_s=ping_timeout, drain_s=drain_seconds
            ),
        )
    except ValueError as error:
        _fail(str(error))
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
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    detach: Annotated[bool, typer.Option(help="Return once everything answers.")] = False,
    max_servers: Annotated[
        int,
        typer.Option(
            "--max",
            min=0,
            max=50,
            help="Autoscale up to this many servers (starts the autoscaler); 0 = no autoscaler.",
        ),
    ] = 0,
    min_servers: Annotated[
        int, typer.Option("--min", min=0, max=50, help="Fewest servers; 0 = --servers.")
    ] = 0,
    target_connections: Annotated[
        float,
        typer.Option(
            min=0, help="Target connections per server; 0 = the autoscaler's default (1000)."
        ),
    ] = 0,
    status_port: Annotated[
        int, typer.Option(min=0, max=65535, help="Autoscaler status page port; 0 = a free one.")
    ] = 0,
    spare: Annotated[
        int,
        typer.Option(
            min=0,
            max=10,
            envvar="IOFLEET_AUTOSCALER_SPARE",
            help="Warm spares (with --max, haproxy only): servers kept started and ready out"
            " of the balancer's rotation, put in rotation first on a scale-up.",
        ),
    ] = 0,
    recovery: Annotated[
        bool,
        typer.Option(
            "--recovery/--no-recovery",
            envvar="IOFLEET_RECOVERY",
            help="Connection state recovery on the servers (IOFLEET_RECOVERY): a client"
            " that reconnects gets what it missed. --no-recovery for python-socketio"
            " client handlers that cannot take the extra offset argument.",
        ),
    ] = True,
    regions: Annotated[
        int,
        typer.Option(
            min=1,
            max=4,
            help="Regional fleets joined by relays over 70 ms delay proxies (docs/regions.md);"
            " region i's balancer on --port + i - 1.",
        ),
    ] = 1,
) -> None:
    """Run Redis, N servers and a sticky balancer on this machine (Ctrl-C stops all).

    With --max, an autoscaler (`python -m autoscaler --backend local`) adds and drains
    servers between --min and --max by connections per server.
    """
    kind = _choice(balancer, ("haproxy", "nginx"), "--balancer")
    if stickiness:
        allowed = get_args(HaproxyStickiness if kind == "haproxy" else NginxStickiness)
        _choice(stickiness, allowed, "--stickiness")
    autoscale: AutoscaleConfig | None = None
    if max_servers:
        low = min_servers or servers
        if not low <= max_servers or servers > max_servers:
            raise typer.BadParameter(
                f"needs --min ({low}) and --servers ({servers}) at most --max ({max_servers})",
                param_hint="--max",
            )
        if spare and kind != "haproxy":
            # nginx's pool follows every server in fleet.json: a spare would be in rotation.
            raise typer.BadParameter(
                "warm spares need the haproxy balancer (nginx pools every listed server)",
                param_hint="--spare",
            )
        autoscale = AutoscaleConfig(
            low, max_servers, target_connections or None, status_port, spare
        )
    elif min_servers or target_connections or spare:
        raise typer.BadParameter(
            "--min/--target-connections/--spare need --max", param_hint="--max"
        )
    config = FleetConfig(
        servers=servers,
        balancer=kind,  # type: ignore[arg-type]
        port=port,
        state_dir=state_dir,
        stickiness=stickiness or None,
        max_servers=max_servers or None,
        warm_spares=spare if max_servers else 0,
        env={**os.environ, "IOFLEET_RECOVERY": "true" if recovery else "false"},
    )
    console = Console()
    if regions > 1:
        if autoscale is not None:
            raise typer.BadParameter("--regions runs without an autoscaler", param_hint="--max")
        raise typer.Exit(run_regions(config, regions, console, detach))
    if detach:
        code = run_detached(config, console, autoscale=autoscale)
    else:
        code = run_foreground(config, console, autoscale)
    raise typer.Exit(code)


@app.command("down")
def down_command(state_dir: StateDirOpt = DEFAULT_STATE_DIR) -> None:
    """Stop the fleet `iofleet up` started from this state directory."""
    if down_regions(state_dir.resolve()):
        Console().print("regions stopped")
        raise typer.Exit(0)
    raise typer.Exit(run_down(state_dir, Console()))


@app.command("drain")
def drain_command(
    node_id: Annotated[str, typer.Argument(help="The server to drain, e.g. node2.")],
    state_dir: StateDirOpt = DEFAULT_STATE_DIR,
    within: Annotated[float, typer.Option(help="Longest wait for its sessions, seconds.")] = 120,
) -> None:
    """Drain one server of the local fleet: out of the balancer, its clients moved."""
    raise typer.Exit(run_drain(state_dir, node_id, within, Console()))


@app.command("restart")
def restart_command(state_dir: StateDirOpt = Path(".iofleet")) -> None:
    """Rolling restart of the local fleet: each server replaced in turn, none lost.

    A new server starts, is ready and in the balancer's rotation, then the old one
    drains; its clients reconnect (and, with recovery, get what they missed).
    """
    # Imported here: the restart moves servers with the autoscaler's local levers, and
    # the rest of the command (render, plan, ...) must run without the autoscaler package.
    from iofleet.rollout_local import run_restart  # noqa: PLC0415 (see above)

    raise typer.Exit(run_restart(state_dir, Console()))


app.command("plan")(plan_command)
app.command("loadtest")(loadtest_command)
app.command("rollout")(rollout_command)

images_app = typer.Typer(help="Build the images from the lock and push them.", no_args_is_help=True)
app.add_typer(images_app, name="images")


@images_app.command("push")
def images_push_command(
    *,
    registry: Annotated[
        list[str],
        typer.Option(
            help="ECR registry, <account>.dkr.ecr.<region>.amazonaws.com; repeat per region.",
        ),
    ],
    base: Annotated[
        str, typer.Option(help="Base image for build-images (default: made from Debian).")
    ] = "",
    dry_run: Annotated[bool, typer.Option(help="Print the commands, run none.")] = False,
) -> None:
    """Build both images from the lock (podman) and push them tagged with the git sha.

    Run from a clean checkout of the commit to ship; prints the pushed images by digest
    for `iofleet:image` and `iofleet:autoscaler_image` (docs/infra.md, "Images").
    """
    source = Path.cwd()
    try:
        tag = images.commit_tag(source)
        with tempfile.TemporaryDirectory(prefix="iofleet-digests-") as digests:
            plan = images.push_plan(tag, registry, Path(digests), base or None)
            if dry_run:
                for step in plan.steps:
                    typer.echo(str(step))
                return
            images.check_architecture()
            pushed = images.run_plan(plan, source)
    except images.ImagesError as error:
        typer.echo(f"iofleet images push: {error}", err=True)
        raise typer.Exit(2) from None
    for reference in pushed:
        key = "autoscaler_image" if "/iofleet-autoscaler@" in reference else "image"
        typer.echo(f"pulumi config set iofleet:{key} {reference}")
