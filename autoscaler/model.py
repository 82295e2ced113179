"""What the control loop sees and moves: nodes, and the Source and Actuator seams.

A backend provides one `Source` (the fleet's nodes with their readiness and
connection counts) and one `Actuator` (the replica count, and which node goes
first on a scale-down). The loop in `autoscaler.controller` joins them through the
pure `autoscaler.policy`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Protocol


@dataclass(frozen=True)
class Node:
    """One server (a pod, or a local process) as last seen."""

    name: str
    address: str | None
    ready: bool
    deleting: bool = False
    connections: float | None = None
    """Last scraped `iofleet_connections`; None when the node did not answer."""
    scraped_at: float | None = None
    """Wall-clock time (s) of that value."""
    error: str | None = None
    """Why the last scrape failed, if it did."""
    deletion_cost: int | None = None
    labels: Mapping[str, str] = field(default_factory=dict)


class Source(Protocol):
    """Where the numbers come from."""

    def nodes(self) -> Sequence[Node]:
        """The fleet's nodes as last seen (no I/O: a background task keeps it fresh)."""
        ...

    @property
    def scrape_interval(self) -> float: ...


class Actuator(Protocol):
    """What moves the fleet."""

    @property
    def owns_replicas(self) -> bool:
        """True when `scale` changes the fleet (direct/local); False when an HPA does."""
        ...

    async def current_replicas(self) -> int:
        """The replica count now asked for (the Deployment's `spec.replicas`)."""
        ...

    async def scale(self, replicas: int) -> None:
        """Ask for `replicas` nodes. On a scale-down, the emptiest nodes go first."""
        ...

    async def rank(self, nodes: Sequence[Node]) -> None:
        """Mark nodes so a scale-down removes the emptiest first."""
        ...
