"""The policy pack's entry point. `PolicyPack(...)` starts the analyzer server and
blocks, so it is only ever constructed here; tests exercise `rules.POLICIES` directly."""

import sys
from pathlib import Path

# Pulumi runs this file from infra/policy/; the repo root makes `infra.policy` importable.
sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from pulumi_policy import EnforcementLevel, PolicyPack

from infra.policy.rules import POLICIES

PolicyPack(
    name="iofleet-invariants",
    enforcement_level=EnforcementLevel.MANDATORY,
    policies=POLICIES,
)
