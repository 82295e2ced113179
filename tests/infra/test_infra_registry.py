"""The registry stack (issue 24, also expected: the image pipeline): ECR repositories
scanned on push, tags immutable, a lifecycle policy; the nodes may only pull."""

from __future__ import annotations

import json
from typing import Any

import pulumi
import pytest
import yaml
from pulumi_fleet import ROOT, FleetMocks, after_deploy, run_stack, stack_config, use_config

from infra.config import ConfigError, RegistryConfig, Settings, load
from server.contract import IMAGE_REPOSITORIES

REPOSITORY = "aws:ecr/repository:Repository"
LIFECYCLE = "aws:ecr/lifecyclePolicy:LifecyclePolicy"
ATTACHMENT = "aws:iam/rolePolicyAttachment:RolePolicyAttachment"


@pulumi.runtime.test
def test_the_registry_stack_makes_each_repository_in_each_region() -> Any:
    fleet = run_stack("registry")

    def check() -> None:
        repositories = fleet.of_type(REPOSITORY)
        placed = sorted((r.inputs["region"], r.inputs["name"]) for r in repositories)
        assert placed == sorted(
            (region, name) for region in ("us-east-1", "eu-west-1") for name in IMAGE_REPOSITORIES
        )
        for repository in repositories:
            assert repository.inputs["imageTagMutability"] == "IMMUTABLE"
            assert repository.inputs["imageScanningConfiguration"] == {"scanOnPush": True}
            assert repository.inputs["forceDelete"] is False
        policies = fleet.of_type(LIFECYCLE)
        assert sorted((p.inputs["region"], p.inputs["repository"]) for p in policies) == placed
        # Nothing of a regional fleet.
        assert not fleet.of_type("aws:eks/cluster:Cluster")
        assert not fleet.of_type("aws:ec2/vpc:Vpc")

    return after_deploy(check)


@pulumi.runtime.test
def test_the_lifecycle_policy_keeps_the_newest_images() -> Any:
    fleet = run_stack("registry", {"iofleet:image_keep_count": 7})

    def check() -> None:
        policy = json.loads(fleet.of_type(LIFECYCLE)[0].inputs["policy"])
        rules = sorted(policy["rules"], key=lambda rule: rule["rulePriority"])
        assert [r["selection"]["tagStatus"] for r in rules] == ["untagged", "any"]
        # ECR: the `any` rule must carry the highest priority number.
        keep = rules[-1]["selection"]
        assert keep == {"tagStatus": "any", "countType": "imageCountMoreThan", "countNumber": 7}
        assert all(r["action"] == {"type": "expire"} for r in rules)

    return after_deploy(check)


def load_registry(overrides: dict[str, Any] | None = None) -> object:
    pulumi.runtime.set_mocks(FleetMocks(), project="iofleet", stack="registry", preview=False)
    use_config(stack_config("registry", overrides))
    return load()


@pulumi.runtime.test
def test_the_registry_stack_file_loads() -> None:
    config = load_registry()
    assert isinstance(config, RegistryConfig)
    assert config.regions == ("us-east-1", "eu-west-1")
    keys = yaml.safe_load((ROOT / "Pulumi.registry.yaml").read_text())["config"]
    assert all(k.startswith("aws:") or k.split(":", 1)[1] in Settings.model_fields for k in keys)


@pulumi.runtime.test
def test_a_bad_image_region_is_named() -> None:
    with pytest.raises(ConfigError) as caught:
        load_registry({"iofleet:image_regions": ["us-east-1", "useast2"]})
    assert caught.value.problems == [
        "iofleet:image_regions: 'useast2' is not an AWS region like us-east-1"
    ]


@pulumi.runtime.test
def test_nodes_may_pull_images_and_nothing_more() -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        ecr = [
            a.inputs["policyArn"].rsplit("/", 1)[-1]
            for a in fleet.of_type(ATTACHMENT)
            if "ContainerRegistry" in a.inputs["policyArn"]
        ]
        # The managed node group's role and Karpenter's node role.
        assert ecr == ["AmazonEC2ContainerRegistryPullOnly"] * 2

    return after_deploy(check)
