"""What a stack may combine with a Redis Cluster (`redis_mode: cluster`): the one place
that decides it. Standard library only: the config validation (infra/config.py) and the
policy pack (infra/policy/rules.py, its own small virtualenv) both read it.
"""

from __future__ import annotations

RECOVERY_ON_CLUSTER = True
"""Whether connection state recovery (`recovery`, IOFLEET_RECOVERY) may run on a Redis
Cluster. True since the server keeps one recovery stream per namespace in that
namespace's hash-tag slot (server/sio/cluster/recovery.py, README "Recovery on a Redis
Cluster"): a namespace's recoverable emits are then bounded by one shard. Set it False
for a server build that refuses the combination, and both checks follow."""

RECOVERY_ON_CLUSTER_REASON = (
    "this server build refuses IOFLEET_RECOVERY on a Redis Cluster (its recovery stream "
    "and sessions need one Redis)"
)

SHARDED_PUBSUB_MIN_REDIS = 7
"""Redis OSS major version that brought sharded pub/sub (SSUBSCRIBE/SPUBLISH), which the
server's fan-out uses on a Cluster; Valkey has it from its first release (7.2)."""
