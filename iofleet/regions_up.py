"""`iofleet up --regions N`: N regional fleets on this machine joined into one.

Each region is a whole local fleet of its own (`iofleet up --detach` in
`<state dir>/<region>`: its Redis, servers and balancer, on `--port` + its index);
then a delay proxy on each directed link and each region's relay
(`iofleet.regions`). Every region shares one JWT secret and admin token (a user's
token works in any region, as with one issuer in production). What was started
is written to `<state dir>/regions.json`; `iofleet down` stops it all.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from iofleet.fleet import FleetConfig
from iofleet.fleet_secrets import SECRETS_FILE, load_secrets
from iofleet.fleet_state import FleetState
from iofleet.processes import StartError, stop_pid
from iofleet.regions import DelayProxyProcess, RelayProcess, links_between, region_names, relays_for
from iofleet.teardown import down, is_ours
from iofleet.up import run_detached

REGIONS_FILE = "regions.json"


def run_regions(config: FleetConfig, count: int, console: Console, detach: bool) -> int:
    top = config.state_dir.resolve()
    logs = top / "logs"
    logs.mkdir(parents=True, exist_ok=True)
    load_secrets(top)
    names = region_names(count)
    for index, name in enumerate(names):
        region_dir = top / name
        region_dir.mkdir(exist_ok=True)
        if not (region_dir / SECRETS_FILE).exists():
            shutil.copy2(top / SECRETS_FILE, region_dir / SECRETS_FILE)  # keeps 0600
        region = replace(config, state_dir=region_dir, port=config.port + index)
        if run_detached(region, console) != 0:
            down_regions(top)
            return 1
    ports = {}
    for name in names:
        state = FleetState.load(top / name)
        assert state is not None and state.redis is not None  # run_detached waited for it
        ports[name] = state.redis.port
    links = links_between(ports)
    relays = relays_for(
        ports, links, {"IOFLEET_RELAY_RECOVERY": config.env.get("IOFLEET_RECOVERY", "true")}
    )
    try:
        for link in links:
            link.start(logs)
            _record(top, names, links, relays)
        for relay in relays:
            relay.start(logs, os.environ)
            _record(top, names, links, relays)
    except StartError as error:
        console.print(f"[red]iofleet up --regions: {error}[/red]")
        down_regions(top)
        return 1
    _print(console, top, names, links, relays)
    if detach:
        return 0
    stop = False

    def interrupt(signum: int, frame: object) -> None:
        nonlocal stop
        stop = True

    signal.signal(signal.SIGINT, interrupt)
    signal.signal(signal.SIGTERM, interrupt)
    while not stop:
        time.sleep(0.2)
    down_regions(top)
    console.print("regions stopped")
    return 0


def _record(
    top: Path, names: list[str], links: list[DelayProxyProcess], relays: list[RelayProcess]
) -> None:
    body: dict[str, Any] = {
        "regions": names,
        "links": [
            {
                "from": link.source,
                "to": link.target_region,
                "pid": link.process.pid,
                "port": link.port,
                "control_url": link.control_url,
                "delay_ms": link.delay_ms,
            }
            for link in links
            if link.process is not None
        ],
        "relays": [
            {"region": relay.region, "pid": relay.process.pid, "admin_url": relay.admin_url}
            for relay in relays
            if relay.process is not None
        ],
    }
    (top / REGIONS_FILE).write_text(json.dumps(body, indent=2))


def down_regions(top: Path) -> bool:
    """Stop what `regions.json` in `top` records (relays, links, then each region's
    fleet); False when there is none."""
    path = top / REGIONS_FILE
    if not path.exists():
        return False
    recorded = json.loads(path.read_text())
    for relay in recorded.get("relays", []):
        if is_ours(int(relay["pid"]), "relay"):
            stop_pid(int(relay["pid"]), grace=5)
    for link in recorded.get("links", []):
        if is_ours(int(link["pid"]), "iofleet.delay_proxy"):
            stop_pid(int(link["pid"]), grace=2)
    for name in recorded.get("regions", []):
        if FleetState.load(top / name) is not None:
            down(top / name)
    path.unlink()
    return True


def _print(
    console: Console,
    top: Path,
    names: list[str],
    links: list[DelayProxyProcess],
    relays: list[RelayProcess],
) -> None:
    table = Table(title="iofleet regions", show_header=True, header_style="bold")
    table.add_column("what")
    table.add_column("where")
    for name in names:
        state = FleetState.load(top / name)
        if state is not None:
            table.add_row(f"{name} demo chat", f"[bold green]{state.url}[/bold green]")
    for relay in relays:
        table.add_row(f"{relay.region} relay status", f"{relay.admin_url}/admin/status")
    for link in links:
        table.add_row(
            f"link {link.source} -> {link.target_region} ({link.delay_ms:g} ms)",
            f"{link.control_url}/stats (POST /cut, /restore)",
        )
    table.add_row("state", str(top / REGIONS_FILE))
    console.print(table)
