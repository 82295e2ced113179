"""`iofleet plan`: print (or write into a stack file) the sizing `iofleet.plan` computes."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from iofleet.plan import (
    Headroom,
    Load,
    Plan,
    PlanError,
    Policy,
    Recovery,
    compare_to_rule_of_thumb,
    headroom,
    load_capacity,
    load_catalog,
    load_profile,
    plan,
)
from iofleet.stackfile import StackFileError, read_config, stack_path, write_config
from server.contract import PING_INTERVAL_SECONDS


def plan_command(
    *,
    connections: Annotated[int, typer.Option(help="Peak concurrent connections, all regions.")],
    messages_per_second: Annotated[
        float, typer.Option(help="Messages clients send per second at peak, all regions.")
    ] = 0.0,
    fanout: Annotated[float, typer.Option(help="Average recipients of one message.")] = 1.0,
    regions: Annotated[
        str, typer.Option(help="Comma-separated AWS regions; the load splits evenly.")
    ] = "us-east-1",
    capacity: Annotated[
        Path | None,
        typer.Option(
            help="Capacity file from `iofleet loadtest --find-capacity` on your hardware "
            "(default: the project's measured profile)."
        ),
    ] = None,
    profile: Annotated[
        Path | None,
        typer.Option(help="Capacity profile (default: iofleet/data/capacity_profile.yaml)."),
    ] = None,
    connections_per_server: Annotated[
        int | None, typer.Option(help="Measured connections one server holds (overrides file).")
    ] = None,
    deliveries_per_server: Annotated[
        float | None, typer.Option(help="Measured deliveries/s one server sends (overrides file).")
    ] = None,
    memory_per_connection_mb: Annotated[
        float | None,
        typer.Option(help="Server memory per connection, MB (default: the profile's)."),
    ] = None,
    utilization: Annotated[
        float, typer.Option(help="Share of capacity a server runs at, at the HPA target.")
    ] = 0.7,
    burst: Annotated[float, typer.Option(help="HPA max = peak servers x (1 + burst).")] = 0.5,
    off_peak_share: Annotated[float, typer.Option(help="HPA min = peak servers x share.")] = 0.25,
    node_type: Annotated[
        str | None, typer.Option(help="Node instance type (default: cheapest that fits).")
    ] = None,
    redis_type: Annotated[
        str | None, typer.Option(help="ElastiCache node type (default: cheapest that fits).")
    ] = None,
    ping_interval: Annotated[
        float,
        typer.Option(help="The servers' IOFLEET_PING_INTERVAL, s: each connection's heartbeat."),
    ] = PING_INTERVAL_SECONDS,
    load_step: Annotated[
        int | None,
        typer.Option(
            help="Connections that may arrive within one node start (all regions): sizes "
            "the warm headroom (headroom_pods)."
        ),
    ] = None,
    instance_types: Annotated[
        Path | None, typer.Option(help="Instance-type table (default: the bundled one).")
    ] = None,
    write_stack: Annotated[
        str | None, typer.Option(help="Write the sizing into Pulumi.NAME.yaml (config keys).")
    ] = None,
    stack_dir: Annotated[Path, typer.Option(help="Where the Pulumi.*.yaml files are.")] = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    recovery: Annotated[
        bool,
        typer.Option(
            "--recovery/--no-recovery",
            help="Size Redis for the recovery stream (stack default); --write-stack writes it "
            "as iofleet:recovery.",
        ),
    ] = True,
    recovery_window: Annotated[
        float, typer.Option(help="iofleet:recovery_window_seconds, seconds.")
    ] = Recovery.window_seconds,
    recovery_max_messages: Annotated[
        int, typer.Option(help="iofleet:recovery_max_messages.")
    ] = Recovery.max_messages,
    message_bytes: Annotated[
        float, typer.Option(help="Average bytes of one message's content (a chat line).")
    ] = Recovery.message_bytes,
) -> None:
    """Size a fleet: servers per region, pods, nodes, Redis, HPA and monthly cost."""
    console = Console()
    try:
        catalog = load_catalog(instance_types)
        shipped = load_profile(profile)
        measured = load_capacity(capacity, shipped.capacity) if capacity else shipped.capacity
        overrides: dict[str, object] = {}
        if connections_per_server is not None:
            overrides["connections_per_server"] = connections_per_server
        if deliveries_per_server is not None:
            overrides["deliveries_per_second_per_server"] = deliveries_per_server
        if memory_per_connection_mb is not None:
            overrides["memory_per_connection_mb"] = memory_per_connection_mb
        if overrides:
            measured = replace(measured, **overrides, source=f"flags + {measured.source}")  # type: ignore[arg-type]
        load = Load(
            connections=connections,
            messages_per_second=messages_per_second,
            fanout=fanout,
            regions=tuple(r.strip() for r in regions.split(",") if r.strip()),
            recovery=Recovery(recovery, recovery_window, recovery_max_messages, message_bytes),
        )
        policy = Policy(
            utilization=utilization,
            burst=burst,
            off_peak_share=off_peak_share,
            node_type=node_type,
            redis_type=redis_type,
            ping_interval_seconds=ping_interval,
        )
        result = plan(load, measured, shipped.redis, catalog, policy)
        baseline = compare_to_rule_of_thumb(result, catalog)
        warm = headroom(load_step, result) if load_step is not None else ()
        written = _write_stack(result, warm, write_stack, stack_dir) if write_stack else None
    except (PlanError, StackFileError) as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)  # one line
        raise typer.Exit(2) from None
    if as_json:
        out: dict[str, Any] = {
            "plan": result.to_json(),
            "rule_of_thumb": baseline.to_json(),
            "profile": shipped.provenance,
        }
        if warm:
            out["headroom"] = [asdict(h) for h in warm]
        if written is not None:
            out["written"] = written
        typer.echo(json.dumps(out, indent=2))
        return
    print_plan(console, result, baseline, shipped.provenance)
    if warm:
        print_headroom(console, warm)
    if written is not None:
        console.print(f"wrote {written['path']}: {', '.join(written['changed']) or 'no change'}")


def _write_stack(
    result: Plan, warm: tuple[Headroom, ...], stack: str, directory: Path
) -> dict[str, Any]:
    path = stack_path(directory, stack)
    region = read_config(path).get("aws:region")
    by_region = {r.region: r for r in result.regions}
    if region not in by_region:
        raise PlanError(
            f"{path}: aws:region is {region!r}, not one of the planned regions "
            f"({', '.join(by_region)}); pass --regions with it"
        )
    planned = by_region[region]
    # Recovery too: the plan sized Redis with or without its stream. Whether the stack
    # may run it on the Redis it plans is the stack check's to say (infra/redis_rules.py).
    config = {**planned.stack_config(), "recovery": result.load.recovery.enabled}
    for room in warm:
        if room.region == region:
            config.update(room.stack_config())
    changed = write_config(path, config)
    return {"path": str(path), "region": region, "changed": changed}


def print_headroom(console: Console, warm: tuple[Headroom, ...]) -> None:
    table = Table(title="warm headroom (headroom_pods)", title_justify="left")
    table.add_column("region")
    table.add_column("load step", justify="right")
    table.add_column("pods", justify="right")
    table.add_column("formula", style="dim")
    for room in warm:
        table.add_row(room.region, str(room.load_step), str(room.pods), room.figure.formula)
    console.print(table)


def print_plan(console: Console, result: Plan, baseline: Plan, provenance: dict[str, Any]) -> None:
    cap = result.capacity
    deliveries = cap.deliveries_per_second_per_server
    if deliveries:
        delivery_text = f"{deliveries:g} deliveries/s/server"
    elif cap.event_cpu_us and cap.delivery_cpu_us:
        delivery_text = (
            f"{cap.event_cpu_us:g} µs CPU/event + {cap.delivery_cpu_us:g} µs CPU/delivery"
        )
    else:
        delivery_text = "deliveries not limiting"
    console.print(
        f"[bold]capacity[/bold] ({cap.source}): {cap.connections_per_server} connections/server, "
        f"{delivery_text}, {cap.memory_per_connection_mb:g} MB/connection + "
        f"{cap.base_memory_mb:g} MB base; Redis {result.redis.cpu_us_per_message:g} µs + "
        f"{result.redis.cpu_us_per_subscriber:g} µs/subscribing node per message"
    )
    console.print(
        f"[dim]profile measured {provenance.get('date')} at {provenance.get('commit')} on "
        f"{provenance.get('machine')}[/dim]"
    )
    for region in result.regions:
        table = Table(title=f"{region.region}", title_justify="left")
        table.add_column("figure")
        table.add_column("value", justify="right")
        table.add_column("formula", style="dim")
        for figure in region.figures:
            table.add_row(figure.name, str(figure.value), figure.formula)
        console.print(table)
    compare = Table(title="measured vs the seeds' rules of thumb", title_justify="left")
    compare.add_column("per region")
    compare.add_column("measured", justify="right")
    compare.add_column("rule of thumb", justify="right")
    compare.add_column("change", justify="right")
    first, base = result.regions[0], baseline.regions[0]
    rows: list[tuple[str, float, float]] = [
        ("HPA target_connections", first.target_connections, base.target_connections),
        ("servers at peak", first.servers, base.servers),
        ("HPA max_replicas", first.max_replicas, base.max_replicas),
        ("nodes desired", first.node_desired, base.node_desired),
        ("Redis shards", first.redis_shards, base.redis_shards),
        ("monthly cost, all regions", result.monthly_cost, baseline.monthly_cost),
    ]
    for name, mine, theirs in rows:
        change = f"{(mine - theirs) / theirs:+.0%}" if theirs else "-"
        compare.add_row(name, f"{mine:g}", f"{theirs:g}", change)
    compare.add_row("pod memory", first.server_memory, base.server_memory, "")
    compare.add_row("node type", first.node_type, base.node_type, "")
    console.print(compare)
    console.print(
        f"estimated monthly cost: [bold]{result.monthly_cost:,.2f} {result.currency}[/bold] "
        f"(on-demand, prices read {result.prices_read}; excludes data transfer and balancers)"
    )
