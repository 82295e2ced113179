"""`iofleet loadtest SCENARIO.yml --target URL`: run a scenario, or find a server's capacity."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated, Any, NoReturn

import typer
from rich.console import Console
from rich.live import Live
from rich.table import Table

from iofleet.fleet_state import DEFAULT_STATE_DIR
from iofleet.loadtest.capacity import CapacityResult, Level, Ramp, find_capacity
from iofleet.loadtest.engine import Auth
from iofleet.loadtest.report import html_report, live_panel, summary_table
from iofleet.loadtest.run import RunOptions, event_loop_runner, run_scenario
from iofleet.loadtest.scenario import ScenarioError, load_scenario
from iofleet.loadtest.signing import SigningError, signing_secret
from iofleet.loadtest.stats import Tick, Totals


def loadtest_command(
    scenario_file: Annotated[Path, typer.Argument(help="Scenario YAML (see examples/loadtest/).")],
    *,
    target: Annotated[
        str | None, typer.Option(help="Server or balancer URL (default: config.target).")
    ] = None,
    workers: Annotated[
        int, typer.Option(min=1, max=64, help="Generator processes (one core each).")
    ] = 1,
    jwt_secret_env: Annotated[
        str, typer.Option(help="Environment variable holding the HS256 secret for auth: signed.")
    ] = "IOFLEET_JWT_SECRET",
    fleet: Annotated[
        Path | None,
        typer.Option(
            help="A local fleet's state directory: sign with its secret (default: the one in"
            f" {DEFAULT_STATE_DIR}/ when --target is that fleet)."
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print the results as JSON.")] = False,
    html: Annotated[
        Path | None, typer.Option(help="Write an HTML page with charts over time.")
    ] = None,
    seed: Annotated[int | None, typer.Option(help="Random seed (repeatable runs).")] = None,
    grace: Annotated[
        float, typer.Option(min=0, help="Seconds users get to finish after the last phase.")
    ] = 5.0,
    find_capacity_: Annotated[
        bool,
        typer.Option("--find-capacity", help="Add users level by level until the SLO breaks."),
    ] = False,
    start: Annotated[int, typer.Option(min=1, help="Capacity: users at the first level.")] = 100,
    step: Annotated[int, typer.Option(min=1, help="Capacity: users added per level.")] = 100,
    max_users: Annotated[int, typer.Option(min=1, help="Capacity: most users tried.")] = 10_000,
    step_seconds: Annotated[
        float, typer.Option(min=0.5, help="Capacity: seconds measured per level.")
    ] = 10,
    ramp_rate: Annotated[
        float, typer.Option(min=1, help="Capacity: new users/s filling a level.")
    ] = 200,
    metrics: Annotated[
        list[str] | None,
        typer.Option(help="Capacity: a server's admin /metrics URL (loop lag), repeatable."),
    ] = None,
    servers: Annotated[
        int, typer.Option(min=0, help="Capacity: servers behind the target (default: --metrics).")
    ] = 0,
    server_pid: Annotated[
        int | None,
        typer.Option(help="Capacity: a local server's PID, to measure memory per connection."),
    ] = None,
    capacity_file: Annotated[
        Path, typer.Option(help="Capacity: where the result goes (for `iofleet plan`).")
    ] = Path("capacity.json"),
    slo_connect_ms: Annotated[float | None, typer.Option(help="SLO: connect p99, ms.")] = None,
    slo_message_p99_ms: Annotated[float | None, typer.Option(help="SLO: message p99, ms.")] = None,
    slo_loop_lag_ms: Annotated[float | None, typer.Option(help="SLO: loop lag, ms.")] = None,
) -> None:
    """Run a load scenario (Artillery-shaped YAML) against a server or a fleet."""
    console = Console(stderr=as_json)
    try:
        scenario = load_scenario(scenario_file)
    except ScenarioError as error:
        _fail(str(error))
    url = target or scenario.config.target
    if not url:
        _fail("no target: pass --target or set config.target")
    try:
        secret = signing_secret(scenario.auth_modes(), url, jwt_secret_env, os.environ, fleet)
    except SigningError as error:
        _fail(str(error))
    overrides = {
        k: v
        for k, v in (
            ("connect_ms", slo_connect_ms),
            ("message_p99_ms", slo_message_p99_ms),
            ("loop_lag_ms", slo_loop_lag_ms),
        )
        if v is not None
    }
    if overrides:
        scenario.config.slo = scenario.config.slo.model_copy(update=overrides)
    auth = Auth(jwt_secret=secret)
    if find_capacity_:
        ramp = Ramp(start, step, max_users, step_seconds, ramp_rate)
        code = _capacity(
            console,
            scenario,
            url,
            auth,
            ramp,
            metrics or [],
            servers,
            capacity_file,
            as_json,
            html,
            server_pid,
        )
        raise typer.Exit(code)
    options = RunOptions(target=url, auth=auth, workers=workers, seed=seed, grace=grace)
    totals = Totals()
    with _display(console, not as_json, totals) as show:
        run_scenario(scenario, options, show, totals)
    summary = totals.summary()
    if html:
        notes = [f"scenario {scenario_file}", f"target {url}", f"{workers} generator process(es)"]
        html.write_text(
            html_report(f"iofleet loadtest: {scenario_file.name}", totals, summary, notes)
        )
    if as_json:
        typer.echo(json.dumps({"summary": summary, "series": totals.series()}, indent=2))
    else:
        console.print(summary_table(summary))
        if html:
            console.print(f"charts: {html}")


def _fail(message: str) -> NoReturn:
    """A configuration problem, known before the first connect: one line, exit 2."""
    typer.echo(f"iofleet loadtest: {message}", err=True)
    raise typer.Exit(2)


@contextmanager
def _display(console: Console, show: bool, totals: Totals) -> Iterator[Callable[[Tick], None]]:
    """A live panel on a terminal; a line every 5 s otherwise; nothing with --json."""
    if console.is_terminal and show:
        with Live(Table(), console=console, refresh_per_second=4, transient=False) as live:
            yield lambda tick: live.update(live_panel(tick, totals.errors_so_far))
        return

    printed: set[int] = set()

    def line(tick: Tick) -> None:
        # With several workers a second arrives once per worker: print it once.
        if tick.second % 5 == 0 and tick.second not in printed:
            printed.add(tick.second)
            errors = sum(totals.errors_so_far.values())
            console.print(
                f"[{tick.second:>4}s] {tick.phase}: {tick.connections} connections, "
                f"{tick.emitted} sent/s, {tick.delivered} delivered/s, {errors} errors so far"
            )

    yield line


def _capacity(
    console: Console,
    scenario: Any,
    url: str,
    auth: Auth,
    ramp: Ramp,
    metrics: list[str],
    servers: int,
    capacity_file: Path,
    as_json: bool,
    html: Path | None,
    server_pid: int | None = None,
) -> int:
    count = servers or max(1, len(metrics))

    def level_line(level: Level) -> None:
        verdict = "held" if level.held else "broke: " + "; ".join(level.broke)
        lag = "-" if level.loop_lag_ms is None else f"{level.loop_lag_ms} ms"
        console.print(
            f"{level.users:>6} users: {level.connections} connected, connect p99 "
            f"{level.connect_p99_ms} ms, message p99 {level.message_p99_ms} ms, lag {lag}, "
            f"{level.delivered_per_second} deliveries/s, errors {level.error_ratio:.2%}"
            f" -> {verdict}"
        )

    if not metrics:
        console.print("note: no --metrics URL, so the event-loop lag is not checked")
    result: CapacityResult = event_loop_runner(
        find_capacity(
            scenario, url, auth, ramp, metrics, count, on_level=level_line, server_pid=server_pid
        )
    )
    result.write(capacity_file)
    if html:
        html.write_text(
            html_report(
                "iofleet loadtest --find-capacity",
                result.totals,
                result.totals.summary(),
                [f"target {url}", f"capacity {result.connections_per_server} connections/server"],
            )
        )
    if as_json:
        typer.echo(json.dumps(result.to_json(), indent=2))
    elif result.held is None:
        console.print("[red]the first level already broke the SLO[/red]: start lower (--start)")
    else:
        console.print(
            f"capacity: [bold]{result.connections_per_server} connections/server[/bold], "
            f"{result.deliveries_per_second_per_server} deliveries/s/server "
            f"({count} server(s)); written to {capacity_file}"
        )
    return 0 if result.held is not None else 1
