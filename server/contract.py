"""Contracts other parts of the bundle key on, stated once (DESIGN.md).

The balancer templates, the local fleet, the Pulumi program and its policy pack
import these instead of repeating the numbers: a balancer's idle timeout must
exceed ping interval + ping timeout, a pod's grace period must exceed drain
delay + drain window, and nginx routes by the node id inside an Engine.IO sid.
This module imports nothing that does I/O.
"""

from __future__ import annotations

import re
from typing import Final

ENV_PREFIX: Final = "IOFLEET_"

PING_INTERVAL_SECONDS: Final = 25.0
"""Engine.IO ping interval the server announces (`IOFLEET_PING_INTERVAL`)."""
PING_TIMEOUT_SECONDS: Final = 20.0
"""Engine.IO ping timeout (`IOFLEET_PING_TIMEOUT`)."""
DRAIN_DELAY_SECONDS: Final = 5.0
"""Wait before closing anything, for the balancer to deregister (`IOFLEET_DRAIN_DELAY`)."""
DRAIN_SECONDS: Final = 30.0
"""Window the drain spreads connection closes over (`IOFLEET_DRAIN_SECONDS`)."""

HS256_MIN_SECRET_BYTES: Final = 32
"""RFC 7518 3.2: an HS256 key at least as long as the hash (`IOFLEET_JWT_SECRET`, and the
stack's `jwt_secret` keys, which the servers get)."""

IMAGE_REPOSITORIES: Final = ("iofleet-server", "iofleet-autoscaler")
"""The images' names: local builds (`localhost/<name>:<tag>`, infra/docker/build-images),
the ECR repositories (infra/registry.py) and what `iofleet images push` pushes."""

PUBLIC_PORT: Final = 8000
ADMIN_PORT: Final = 9000

NODE_ID_RULE: Final = "[A-Za-z0-9_-]{1,63}"
"""What a node id may hold: it is the prefix of every Engine.IO sid (`<node>.<random>`)."""
NODE_ID_PATTERN: Final = re.compile(rf"^{NODE_ID_RULE}$")

CONNECTIONS_METRIC: Final = "iofleet_connections"
"""The autoscaling metric: Socket.IO connections on one node (a gauge)."""
