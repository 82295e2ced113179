"""The ElastiCache parameter group's family follows the engine and its version (issue
24): AWS names Redis OSS 6's family redis6.x (not redis6), and Valkey has its own."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import after_deploy, run_stack

from infra.elasticache import parameter_group_family


@pytest.mark.parametrize(
    ("engine", "version", "family"),
    [
        ("redis", "6.2", "redis6.x"),
        ("redis", "6.0", "redis6.x"),
        ("redis", "7.1", "redis7"),
        ("valkey", "7.2", "valkey7"),
        ("valkey", "8.0", "valkey8"),
    ],
)
def test_parameter_group_family(engine: str, version: str, family: str) -> None:
    assert parameter_group_family(engine, version) == family


@pulumi.runtime.test
def test_a_valkey_stack_makes_a_valkey_group_with_a_valkey_family() -> Any:
    fleet = run_stack(
        "prod-us-east-1", {"iofleet:redis_engine": "valkey", "iofleet:redis_engine_version": "8.0"}
    )

    def check() -> None:
        group = fleet.one("aws:elasticache/replicationGroup:ReplicationGroup").inputs
        assert (group["engine"], group["engineVersion"]) == ("valkey", "8.0")
        params = fleet.one("aws:elasticache/parameterGroup:ParameterGroup").inputs
        assert params["family"] == "valkey8"

    return after_deploy(check)
