"""What a stack may combine with a Redis Cluster (`redis_mode: cluster`): the one place
that decides it. Standard library only: the config validation (infra/config.py) and the
policy pack (infra/policy/rules.py, its own small virtualenv) both read it.
"""

from __future__ import annotations

RECOVERY_ON_CLUSTER = False
"""Whether connection state recovery (`recovery`, IOFLEET_RECOVERY) may run on a Redis
Cluster. False while the server refuses the combination at start (server/settings.py:
its recovery stream and session keys need one Redis); flip it here once the server runs
recovery on a Cluster (issue 20), and both checks follow."""

RECOVERY_ON_CLUSTER_REASON = (
    "the server refuses IOFLEET_RECOVERY on a Redis Cluster (its recovery stream and "
    "sessions need one Redis)"
)

SHARDED_PUBSUB_MIN_REDIS = 7
"""Redis OSS major version that brought sharded pub/sub (SSUBSCRIBE/SPUBLISH), which the
server's fan-out uses on a Cluster; Valkey has it from its first release (7.2)."""
