"""Redis cluster mode (`redis_mode: cluster`, issue 20) and the Redis AUTH rotation
window (`redis_auth_rotation`, issue 24): what the program renders under mocks, what
the config check and the policy pack refuse, and what `iofleet plan --write-stack`
hands the program for the 1M-connection load."""

from __future__ import annotations

import json
import shutil
from pathlib import Path
from typing import Any

import pulumi
import pytest
from pulumi_fleet import ROOT, Recorded, after_deploy, run_stack
from test_infra_config import config_error
from test_infra_policy import BY_NAME, broken, find, violations
from typer.testing import CliRunner

from infra import elasticache, redis_rules
from iofleet.cli import app
from iofleet.stackfile import read_config

GROUP = "aws:elasticache/replicationGroup:ReplicationGroup"
ALARM = "aws:cloudwatch/metricAlarm:MetricAlarm"
CLUSTER = {"iofleet:redis_mode": "cluster", "iofleet:redis_shards": 3, "iofleet:recovery": False}
"""prod-us-east-1 (2 replicas per primary) as a 3-shard cluster."""


@pulumi.runtime.test
def test_cluster_mode_renders_a_cluster_mode_group() -> Any:
    fleet = run_stack("prod-us-east-1", CLUSTER)

    def check() -> None:
        group = fleet.one(GROUP).inputs
        assert group["clusterMode"] == "enabled"
        assert (group["numNodeGroups"], group["replicasPerNodeGroup"]) == (3, 2)
        assert "numCacheClusters" not in group  # AWS: conflicts with num_node_groups
        assert group["multiAzEnabled"] is group["automaticFailoverEnabled"] is True
        assert group["transitEncryptionEnabled"] is True
        assert group["transitEncryptionMode"] == "required"
        assert group["atRestEncryptionEnabled"] is True
        assert group["authToken"] == "pw-redis-auth-token"
        # Its own group id: the replication group's (a new group, not a conversion).
        assert group["replicationGroupId"] == "iofleet-prod-us-east-1-c"
        params = fleet.one("aws:elasticache/parameterGroup:ParameterGroup").inputs
        assert params["family"] == "redis7"
        values = {p["name"]: p["value"] for p in params["parameters"]}
        assert values["cluster-enabled"] == "yes"
        assert values["client-output-buffer-limit-pubsub-hard-limit"] == "268435456"
        (secret,) = fleet.kubernetes("Secret", "iofleet-server")
        url = secret.inputs["stringData"]["redis-url"]
        assert url == (
            "rediss+cluster://:pw-redis-auth-token@clustercfg.iofleet.cache.amazonaws.com:6379"
        )
        assert "stringData.redis-url" in secret.secrets or "stringData" in secret.secrets
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
        assert "pw-redis-auth-token" not in json.dumps(deployment.inputs)
        env = {
            e["name"]: e
            for e in deployment.inputs["spec"]["template"]["spec"]["containers"][0]["env"]
        }
        assert env["IOFLEET_RECOVERY"]["value"] == "false"
        assert env["IOFLEET_REDIS_URL"]["valueFrom"]["secretKeyRef"]["key"] == "redis-url"

    return after_deploy(check)


def test_member_ids_by_hand() -> None:
    assert elasticache.member_ids("g", "replication", 1, 2) == ["g-001", "g-002", "g-003"]
    assert elasticache.member_ids("g", "cluster", 2, 1) == [
        "g-0001-001",
        "g-0001-002",
        "g-0002-001",
        "g-0002-002",
    ]


@pulumi.runtime.test
def test_every_node_of_every_shard_has_its_alarms() -> Any:
    fleet = run_stack("prod-us-east-1", CLUSTER)

    def check() -> None:
        by_metric: dict[str, set[str]] = {}
        for alarm in fleet.of_type(ALARM):
            if alarm.inputs["namespace"] == "AWS/ElastiCache":
                member = alarm.inputs["dimensions"]["CacheClusterId"]
                by_metric.setdefault(alarm.inputs["metricName"], set()).add(member)
        nodes = {
            f"iofleet-prod-us-east-1-c-{shard:04d}-{node:03d}"
            for shard in (1, 2, 3)
            for node in (1, 2, 3)
        }
        for metric in (
            "EngineCPUUtilization",
            "NetworkBandwidthOutAllowanceExceeded",
            "CurrConnections",
            "DatabaseMemoryUsagePercentage",
            "ReplicationLag",
        ):
            assert by_metric[metric] == nodes, metric

    return after_deploy(check)


@pulumi.runtime.test
def test_the_secret_waits_for_the_group_it_points_at() -> Any:
    """A new token (or a new group) reaches the Secret, and so the pods, only once the
    group has taken it."""
    fleet = run_stack("prod-us-east-1", CLUSTER)

    def check() -> None:
        assert "redis-cluster-group" in fleet.dependencies["server-secret"]

    return after_deploy(check)


@pulumi.runtime.test
def test_every_policy_passes_the_cluster_stack() -> Any:
    fleet = run_stack("prod-us-east-1", CLUSTER)

    def check() -> None:
        for name in BY_NAME:
            assert violations(name, fleet.resources) == [], name

    return after_deploy(check)


@pulumi.runtime.test
def test_the_policy_pack_refuses_a_shard_without_replica_and_recovery_on_a_cluster(
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    """With the rule set to refuse (a server build without recovery on a Cluster)."""
    monkeypatch.setattr(redis_rules, "RECOVERY_ON_CLUSTER", False)
    fleet = run_stack("prod-us-east-1", CLUSTER)

    def no_replica(resources: list[Recorded]) -> None:
        next(r.inputs for r in resources if r.type == GROUP)["replicasPerNodeGroup"] = 0

    def recovery_on(resources: list[Recorded]) -> None:
        pod = find(resources, "Deployment", "iofleet-server")["spec"]["template"]["spec"]
        for var in pod["containers"][0]["env"]:
            if var["name"] == "IOFLEET_RECOVERY":
                var["value"] = "true"

    def check() -> None:
        found = violations("redis-tls-auth-multi-az", broken(fleet, no_replica))
        assert len(found) == 1 and "replicasPerNodeGroup" in found[0], found
        found = violations("recovery-needs-supported-redis", broken(fleet, recovery_on))
        assert len(found) == 1 and "IOFLEET_RECOVERY" in found[0], found

    return after_deploy(check)


@pulumi.runtime.test
def test_recovery_on_a_cluster_is_allowed(monkeypatch: pytest.MonkeyPatch) -> Any:
    """The server recovers on a Cluster (tests/server/test_recovery_cluster.py), so the
    config check and the policy pack accept the combination as shipped."""
    assert redis_rules.RECOVERY_ON_CLUSTER
    fleet = run_stack("prod-us-east-1", {**CLUSTER, "iofleet:recovery": True})

    def check() -> None:
        assert fleet.one(GROUP).inputs["clusterMode"] == "enabled"
        assert violations("recovery-needs-supported-redis", fleet.resources) == []

    return after_deploy(check)


# --- `iofleet plan --write-stack` hands the program a cluster -------------------------

ONE_MILLION = ["plan", "--connections", "1000000", "--messages-per-second", "20000"]
ONE_MILLION += ["--fanout", "50", "--regions", "us-east-1,eu-west-1"]


def _planned(tmp_path: Path, *flags: str) -> dict[str, Any]:
    """The iofleet: keys the planner changes in a copy of Pulumi.prod-us-east-1.yaml
    (the rest of the file keeps its placeholders, which the operator's values replace)."""
    stack = tmp_path / "Pulumi.prod-us-east-1.yaml"
    shutil.copy(ROOT / "Pulumi.prod-us-east-1.yaml", stack)
    args = [*ONE_MILLION, *flags, "--write-stack", "prod-us-east-1", "--stack-dir", str(tmp_path)]
    result = CliRunner().invoke(app, [*args, "--json"])
    assert result.exit_code == 0, result.output
    changed = json.loads(result.output)["written"]["changed"]
    config = read_config(stack)
    return {key: config[key] for key in changed}


@pulumi.runtime.test
def test_the_planned_one_million_stack_renders_its_shards(tmp_path: Path) -> Any:
    written = _planned(tmp_path, "--no-recovery")
    fleet = run_stack("prod-us-east-1", written)

    def check() -> None:
        group = fleet.one(GROUP).inputs
        assert group["clusterMode"] == "enabled"
        assert group["numNodeGroups"] == written["iofleet:redis_shards"] == 2
        assert group["nodeType"] == written["iofleet:redis_node_type"]

    return after_deploy(check)


@pulumi.runtime.test
def test_the_planned_cluster_with_recovery_renders(tmp_path: Path) -> Any:
    written = _planned(tmp_path)  # --recovery, the default (the stack has it on already)
    assert written["iofleet:redis_mode"] == "cluster" and "iofleet:recovery" not in written
    fleet = run_stack("prod-us-east-1", written)

    def check() -> None:
        assert fleet.one(GROUP).inputs["clusterMode"] == "enabled"
        pod = find(fleet.resources, "Deployment", "iofleet-server")["spec"]["template"]["spec"]
        env = {v["name"]: v.get("value") for v in pod["containers"][0]["env"]}
        assert env["IOFLEET_RECOVERY"] == "true"
        assert violations("recovery-needs-supported-redis", fleet.resources) == []

    return after_deploy(check)


def test_the_planned_cluster_with_recovery_is_refused_by_a_refusing_rule(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(redis_rules, "RECOVERY_ON_CLUSTER", False)
    message = config_error("prod-us-east-1", _planned(tmp_path))
    assert "iofleet:recovery: true" in message and "iofleet:redis_mode: cluster" in message


# --- rotating the AUTH token ---------------------------------------------------------


@pytest.mark.parametrize(
    ("step", "generation", "strategy"),
    [(0, 0, "ROTATE"), (1, 1, "ROTATE"), (2, 1, "SET"), (3, 2, "ROTATE"), (4, 2, "SET")],
)
def test_rotation_steps(step: int, generation: int, strategy: str) -> None:
    assert (elasticache.auth_token_generation(step), elasticache.auth_update_strategy(step)) == (
        generation,
        strategy,
    )


@pytest.mark.parametrize(
    ("step", "keepers", "strategy"),
    [(0, None, "ROTATE"), (1, {"generation": "1"}, "ROTATE"), (2, {"generation": "1"}, "SET")],
)
@pulumi.runtime.test
def test_a_rotation_step_renders_its_token_and_strategy(
    step: int, keepers: dict[str, str] | None, strategy: str
) -> Any:
    fleet = run_stack("prod-us-east-1", {"iofleet:redis_auth_rotation": step})

    def check() -> None:
        token = fleet.one("random:index/randomPassword:RandomPassword", "redis-auth-token")
        assert token.inputs.get("keepers") == keepers
        group = fleet.one(GROUP).inputs
        assert group["authTokenUpdateStrategy"] == strategy
        assert group["clusterMode"] == "disabled"

    return after_deploy(check)
