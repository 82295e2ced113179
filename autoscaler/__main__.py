"""`python -m autoscaler --backend kubernetes [--mode hpa|direct]`, or
`python -m autoscaler --backend local --state-dir DIR` (what `iofleet up` starts)."""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import signal
import sys
from collections.abc import Coroutine
from pathlib import Path
from typing import Any

from lightkube import AsyncClient
from lightkube.core.exceptions import ConfigError

from autoscaler.kube.actuator import RefuseToStart
from autoscaler.kube.backend import run
from autoscaler.local.backend import run as local_run
from autoscaler.settings import Settings, load_settings
from server.core.jsonlog import configure_logging
from server.settings import SettingsError


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m autoscaler",
        description=(
            "iofleet's connection-count autoscaler: HPA v2 policy on iofleet_connections."
            " Settings come from IOFLEET_AUTOSCALER_* (see README)."
        ),
    )
    parser.add_argument(
        "--backend",
        choices=["kubernetes", "local"],
        required=True,
        help="kubernetes: pods, custom.metrics.k8s.io, pod-deletion-cost; local: processes",
    )
    parser.add_argument(
        "--mode",
        choices=["hpa", "direct"],
        default=None,
        help="hpa (default): an HPA scales from our metrics; direct: we scale the Deployment"
        " (overrides IOFLEET_AUTOSCALER_MODE)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=None,
        help="local: the fleet's state directory (overrides IOFLEET_AUTOSCALER_STATE_DIR)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        settings = load_settings()
    except SettingsError as error:
        print(f"autoscaler: {error}", file=sys.stderr)
        return 2
    if args.mode is not None:
        settings = settings.model_copy(update={"mode": args.mode})  # argparse checked it
    configure_logging("autoscaler", settings.log_level)  # the server's one-line JSON logs
    # The Kubernetes client's HTTP library logs every request at INFO: a line per patch,
    # per watch, per review. Keep its warnings only.
    for name in ("httpx", "httpx2", "httpcore"):
        logging.getLogger(name).setLevel(logging.WARNING)
    if args.backend == "local":
        state_dir = args.state_dir or settings.state_dir
        if state_dir is None:
            print(
                "autoscaler: --backend local needs the fleet's --state-dir"
                " (or IOFLEET_AUTOSCALER_STATE_DIR)",
                file=sys.stderr,
            )
            return 2
        return asyncio.run(_until_signal(local_run(settings, state_dir.resolve())))
    return asyncio.run(_run_kubernetes(settings))


async def _until_signal(work: Coroutine[Any, Any, None]) -> int:
    """Run `work` until SIGTERM/SIGINT (exit 0); RefuseToStart exits 2 with its line."""
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: main_task.cancel() if main_task else None)
    try:
        await work
    except RefuseToStart as error:
        print(f"autoscaler: {error}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        return 0
    return 0


async def _run_kubernetes(settings: Settings) -> int:
    try:
        client = AsyncClient(namespace=settings.namespace)
    except ConfigError as error:
        print(f"autoscaler: no Kubernetes configuration: {error}", file=sys.stderr)
        return 2
    main_task = asyncio.current_task()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, lambda: main_task.cancel() if main_task else None)
    try:
        await run(settings, client)
    except RefuseToStart as error:
        print(f"autoscaler: {error}", file=sys.stderr)
        return 2
    except asyncio.CancelledError:
        return 0
    finally:
        with contextlib.suppress(Exception):
            await client.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
