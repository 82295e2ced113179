"""`iofleet rollout`: waves of stacks, each previewed, updated and health-gated."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from iofleet.rollout import (
    HttpHealth,
    PulumiStacks,
    Rollout,
    RolloutError,
    RolloutReport,
    StackOpsError,
    check_from_wave,
    load_rollout,
    plan_lines,
    run_rollout,
)

COLORS = {"passed": "green", "failed": "red", "gate": "yellow", "up": "cyan", "preview": "cyan"}


def report_table(report: RolloutReport) -> Table:
    table = Table(title="rollout", title_justify="left")
    for column in ("wave", "stack", "status", "changes", "seconds", "detail"):
        table.add_column(column)
    for entry in report.stacks:
        color = COLORS.get(entry.status, "dim")
        changes = ", ".join(f"{k} {v}" for k, v in entry.changes.items() if k != "same")
        detail = entry.detail or "; ".join(entry.gate_reasons)
        table.add_row(
            entry.wave,
            entry.stack,
            f"[{color}]{entry.status}[/{color}]",
            changes,
            f"{entry.seconds:g}" if entry.seconds else "",
            detail,
        )
    return table


def rollout_command(
    config: Annotated[
        Path, typer.Option(help="Rollout file: waves, gate, stacks' admin URLs.")
    ] = Path("rollout.yaml"),
    *,
    plan: Annotated[bool, typer.Option("--plan", help="Print the waves; change nothing.")] = False,
    from_wave: Annotated[
        str | None, typer.Option(help="Resume at this wave (earlier waves are skipped).")
    ] = None,
    work_dir: Annotated[Path, typer.Option(help="Directory holding Pulumi.yaml.")] = Path(),
    as_json: Annotated[bool, typer.Option("--json", help="Print the report as JSON.")] = False,
) -> None:
    """Roll stacks out wave by wave: preview, up, health gate; stop at the first failure."""
    console = Console(stderr=as_json)
    try:
        rollout_config = load_rollout(config)
        # Before the Pulumi CLI is looked for: the whole file is checked first.
        check_from_wave(rollout_config, from_wave)
    except RolloutError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)  # one line
        raise typer.Exit(2) from None
    if plan:
        if as_json:
            typer.echo(json.dumps(rollout_config.model_dump(), indent=2))
        else:
            for line in plan_lines(rollout_config):
                console.print(line)
        return
    try:
        stacks = PulumiStacks(work_dir)
    except StackOpsError as error:
        console.print(f"[red]error:[/red] {error}", soft_wrap=True)  # one line
        raise typer.Exit(2) from None
    with Live(Table(), console=console, refresh_per_second=4, transient=as_json) as live:
        rollout = Rollout(
            rollout_config,
            stacks,
            HttpHealth(),
            on_change=lambda report: live.update(report_table(report)),
        )
        try:
            report = run_rollout(rollout, from_wave)
        except RolloutError as error:
            console.print(f"[red]error:[/red] {error}", soft_wrap=True)  # one line
            raise typer.Exit(2) from None
    print_report(console, report, as_json)
    raise typer.Exit(0 if report.ok else 1)


def print_report(console: Console, report: RolloutReport, as_json: bool) -> None:
    if as_json:
        typer.echo(json.dumps(report.to_json(), indent=2))
        return
    if report.ok:
        console.print("[green]every wave passed its health gate[/green]")
        return
    console.print(f"[red]stopped at wave {report.stopped_at}[/red]; what to do next:")
    for step in report.next_steps:
        console.print(f"  - {step}")
