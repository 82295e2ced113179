"""The stack config: one typed, validated model read through pulumi.Config; errors name
the key and what is allowed; Pulumi.yaml states exactly what the model states."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_fleet import ROOT, STACKS, FleetMocks, run_stack, stack_config, use_config

from infra.config import (
    ConfigError,
    GlobalConfig,
    RegionalConfig,
    Settings,
    load,
    pulumi_yaml_config,
)

SPEC = Settings.model_fields


class _NoResources(pulumi.runtime.Mocks):
    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict]:
        return f"{args.name}-id", dict(args.inputs)

    def call(self, args: pulumi.runtime.MockCallArgs) -> dict:
        return {}


def config_error(stack: str, overrides: dict[str, Any]) -> str:
    pulumi.runtime.set_mocks(_NoResources(), project="iofleet", stack=stack, preview=False)
    use_config(stack_config(stack, overrides))
    with pytest.raises(ConfigError) as caught:
        load()
    return str(caught.value)


@pytest.mark.parametrize("stack", STACKS)
@pulumi.runtime.test
def test_every_stack_file_loads_with_the_operators_values(stack: str) -> None:
    pulumi.runtime.set_mocks(_NoResources(), project="iofleet", stack=stack, preview=False)
    use_config(stack_config(stack))
    config = load()
    expected = GlobalConfig if stack == "global" else RegionalConfig
    assert isinstance(config, expected)
    assert config.stack == stack


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"iofleet:balancer": "elb"}, ["iofleet:balancer", "'elb'", "alb", "nginx", "haproxy"]),
        ({"iofleet:image": ""}, ["iofleet:image is required", "pinned"]),
        ({"iofleet:image": "example/server:latest"}, ["iofleet:image", "not pinned", "latest"]),
        ({"iofleet:image": "example/server"}, ["iofleet:image", "not pinned"]),
        ({"iofleet:az_count": 1}, ["iofleet:az_count", "out of range", "2..6"]),
        ({"iofleet:az_count": "three"}, ["iofleet:az_count", "not an integer"]),
        ({"iofleet:single_nat_gateway": "yes"}, ["iofleet:single_nat_gateway", "true or false"]),
        ({"iofleet:cors_origins": []}, ["iofleet:cors_origins is required"]),
        ({"iofleet:cors_origins": "https://a"}, ["iofleet:cors_origins", "list"]),
        ({"iofleet:cors_origins": ["*"]}, ["iofleet:cors_origins", "no *"]),
        (
            {"iofleet:transports": ["websocket", "sse"]},
            ["iofleet:transports", "websocket, polling"],
        ),
        ({"iofleet:idle_timeout_seconds": 45}, ["iofleet:idle_timeout_seconds", "(45)", "45"]),
        ({"iofleet:min_replicas": 9}, ["iofleet:min_replicas", "iofleet:max_replicas"]),
        ({"iofleet:node_desired": 9}, ["iofleet:node_desired", "iofleet:node_min"]),
        ({"iofleet:vpc_cidr": "10.0.0.0/8"}, ["iofleet:vpc_cidr", "/16../20"]),
        ({"iofleet:namespace": "Iofleet_NS"}, ["iofleet:namespace", "DNS-1123"]),
        ({"iofleet:cluster_version": "1.31.2"}, ["iofleet:cluster_version", "major.minor"]),
        # Out of EKS standard support: not a version the program offers any more.
        ({"iofleet:cluster_version": "1.31"}, ["iofleet:cluster_version", "1.35"]),
        ({"iofleet:autoscaling": "keda"}, ["iofleet:autoscaling", "hpa", "direct", "none"]),
        (
            {"iofleet:autoscaler_image": ""},
            ["iofleet:autoscaler_image is required", "iofleet:autoscaling: none"],
        ),
        ({"iofleet:cluster_admin_arns": ["ops"]}, ["iofleet:cluster_admin_arns", "IAM role"]),
        ({"iofleet:prometheus_selector_label": "release"}, ["prometheus_selector_label"]),
        ({"iofleet:balancr": "alb"}, ["iofleet:balancr is not a known key", "balancer"]),
        ({"iofleet:server_memory": "1GB"}, ["iofleet:server_memory", "quantity"]),
        ({"iofleet:certificate_arn": "cert-123"}, ["iofleet:certificate_arn", "ACM"]),
        ({"iofleet:alarm_email": "oncall"}, ["iofleet:alarm_email", "email"]),
        # Issue 24: both prod stacks shipped oncall@example.com and passed.
        ({"iofleet:alarm_email": "oncall@example.com"}, ["iofleet:alarm_email", "placeholder"]),
        ({"iofleet:alarm_email": "ops@pager.example"}, ["iofleet:alarm_email", "placeholder"]),
        ({"iofleet:kind": "regionl"}, ["iofleet:kind", "regional", "global"]),
        ({"aws:region": ""}, ["aws:region is required"]),
        (
            {"iofleet:jwt_public_key": "PEM", "iofleet:jwt_secret": "s" * 32},
            ["jwt_public_key", "jwt_secret"],
        ),
        # Issue 20: Redis cluster mode (tests/infra/test_infra_redis_cluster.py).
        (
            {"iofleet:redis_shards": 2},
            ["iofleet:redis_shards (2)", "iofleet:redis_mode: cluster"],
        ),
        (
            {
                "iofleet:redis_mode": "cluster",
                "iofleet:recovery": False,
                "iofleet:redis_engine_version": "6.2",
            },
            ["iofleet:redis_engine_version (6.2)", "sharded pub/sub"],
        ),
        ({"iofleet:redis_mode": "sharded"}, ["iofleet:redis_mode", "replication, cluster"]),
        ({"iofleet:redis_auth_rotation": -1}, ["iofleet:redis_auth_rotation", "out of range"]),
        # The servers refuse a shorter HS256 key at start: every new pod would crash-loop.
        ({"iofleet:jwt_secret": "short"}, ["iofleet:jwt_secret:", "at least 32 bytes"]),
        (
            {"iofleet:jwt_secret_previous": "short"},
            ["iofleet:jwt_secret_previous:", "at least 32 bytes"],
        ),
    ],
)
@pulumi.runtime.test
def test_regional_config_errors_name_the_key(
    overrides: dict[str, Any], fragments: list[str]
) -> None:
    message = config_error("dev", overrides)
    for fragment in fragments:
        assert fragment in message, message


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"iofleet:global_routing": "dns"}, ["iofleet:global_routing", "route53", "accelerator"]),
        ({"iofleet:regional_stacks": []}, ["iofleet:regional_stacks is required"]),
        ({"iofleet:domain": ""}, ["iofleet:domain is required"]),
        ({"iofleet:hosted_zone_id": ""}, ["iofleet:hosted_zone_id is required"]),
        ({"iofleet:health_check_path": "healthz"}, ["iofleet:health_check_path", "start with /"]),
    ],
)
@pulumi.runtime.test
def test_global_config_errors_name_the_key(overrides: dict[str, Any], fragments: list[str]) -> None:
    message = config_error("global", overrides)
    for fragment in fragments:
        assert fragment in message, message


@pulumi.runtime.test
def test_a_config_error_stops_the_program_before_any_resource() -> None:
    mocks = FleetMocks()
    with pytest.raises(ConfigError, match="iofleet:balancer"):
        run_stack("dev", {"iofleet:balancer": "f5"}, mocks=mocks)
    assert mocks.resources == []


@pulumi.runtime.test
def test_derived_timings_cover_the_drain() -> None:
    pulumi.runtime.set_mocks(_NoResources(), project="iofleet", stack="dev", preview=False)
    use_config(stack_config("dev"))
    config = load()
    assert isinstance(config, RegionalConfig)
    drain = config.drain_delay + config.drain_seconds
    assert config.termination_grace_seconds > drain
    assert config.deregistration_delay_seconds >= config.drain_seconds


@pulumi.runtime.test
def test_pulumi_yaml_states_what_the_model_states() -> None:
    """Types, defaults and descriptions: one source (the model); Pulumi.yaml is its copy."""
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    assert project["name"] == "iofleet"
    assert project["main"] == "infra/"
    assert project["runtime"]["name"] == "python"
    assert project["config"] == pulumi_yaml_config(), (
        "Pulumi.yaml's config block differs from infra/config.py's Settings: copy "
        "infra.config.pulumi_yaml_config() into it"
    )
    for key, entry in project["config"].items():
        assert entry["description"], key


@pulumi.runtime.test
def test_the_program_reads_config_through_public_apis_only() -> None:
    """pulumi.Config for values, pulumi.runtime.get_config_env for the key list; not
    Pulumi's internal runtime config map (issue 10)."""
    source = (ROOT / "infra" / "config.py").read_text()
    assert "runtime_config" not in source and "CONFIG.get" not in source
    assert "pulumi.Config(NAMESPACE)" in source
    assert "get_config_env" in pulumi.runtime.__all__


@pulumi.runtime.test
def test_stack_files_use_only_known_keys() -> None:
    for stack in STACKS:
        config = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())["config"]
        for key in config:
            namespace, name = key.split(":", 1)
            assert namespace in ("iofleet", "aws"), key
            assert namespace == "aws" or name in SPEC, key


@pulumi.runtime.test
def test_docs_describe_every_key() -> None:
    text = (ROOT / "docs" / "infra.md").read_text()
    for key in SPEC:
        assert f"`{key}`" in text, key
    assert "pulumi up" in text and "Pulumi.global.yaml" in text
    assert Path(ROOT / "infra" / "policy" / "PulumiPolicy.yaml").exists()


@pulumi.runtime.test
def test_no_infra_module_shadows_another_module() -> None:
    """Pulumi runs infra/__main__.py with infra/ itself first on sys.path, so a module
    named like a stdlib or installed one (secrets.py, redis.py) would replace it for
    every import during the program."""
    import importlib.util
    import sys

    for path in (ROOT / "infra").glob("*.py"):
        name = path.stem
        if name.startswith("__"):
            continue
        assert name not in sys.stdlib_module_names, f"infra/{path.name} shadows the stdlib"
        spec = importlib.util.find_spec(name)
        # (pytest puts test folders such as tests/balancer on sys.path: not installed.)
        tests = str(ROOT / "tests")
        installed = spec is not None and spec.origin is not None and tests not in spec.origin
        assert not installed, f"infra/{path.name} shadows {name} ({spec and spec.origin})"


@pulumi.runtime.test
def test_neither_server_nor_iofleet_imports_infra() -> None:
    """infra is a package of the project now; the layers stay one-way."""
    import ast

    for package in ("server", "iofleet"):
        for path in (ROOT / package).rglob("*.py"):
            for node in ast.walk(ast.parse(path.read_text())):
                modules = (
                    [a.name for a in node.names]
                    if isinstance(node, ast.Import)
                    else [node.module or ""]
                    if isinstance(node, ast.ImportFrom)
                    else []
                )
                assert not any(m.split(".")[0] == "infra" for m in modules), path
