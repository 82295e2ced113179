"""Print the server and autoscaler Deployments the Pulumi program renders for a stack,
as JSON on stdout: `python tests/images/render_workloads.py dev`.

The image tests run containers the way these manifests say (securityContext, volumes,
grace period, env). They call this in a subprocess: Pulumi's mocks drive their own event
loop, which clashes with pytest-asyncio's (tests/infra run apart for the same reason).
"""

from __future__ import annotations

import asyncio
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "infra"))

import pulumi
from pulumi.runtime.stack import wait_for_rpcs
from pulumi_fleet import run_stack

NAMES = ("iofleet-server", "iofleet-autoscaler")


def render(stack: str) -> dict[str, Any]:
    """{deployment name: manifest} for `stack`, once every registration has completed."""
    asyncio.set_event_loop(asyncio.new_event_loop())
    rendered: dict[str, Any] = {}

    @pulumi.runtime.test
    def program() -> Any:
        fleet = run_stack(stack)

        async def settled() -> None:
            await wait_for_rpcs(await_all_outstanding_tasks=False)
            for name in NAMES:
                (deployment,) = fleet.kubernetes("Deployment", name)
                rendered[name] = deployment.manifest()

        return settled()

    program()
    return rendered


if __name__ == "__main__":
    json.dump(render(sys.argv[1] if len(sys.argv) > 1 else "dev"), sys.stdout)
