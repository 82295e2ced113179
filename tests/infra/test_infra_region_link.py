"""The inter-region link (infra/region_link.py, docs/regions.md) under mocks: the
relay Deployment, its Secret and PodDisruptionBudget in each peered regional stack;
VPC peering, routes and the Redis port only in the global stack; the policy that
refuses a cross-region path without TLS."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import FleetMocks, after_deploy, run_stack
from test_infra_policy import broken, find, violations

from infra.config import validate
from infra.region_link import RELAY, RELAY_LABELS
from relay.settings import Settings
from server.net.redis_topology import parse_redis_url

PEERS = {"prod-us-east-1": "prod-eu-west-1", "prod-eu-west-1": "prod-us-east-1"}


def relay_container(resources: Any) -> dict[str, Any]:
    pod = find(resources, "Deployment", RELAY)["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    return container


@pytest.mark.parametrize("stack", list(PEERS))
@pulumi.runtime.test
def test_a_peered_region_runs_a_relay_with_its_far_redis_from_a_secret(stack: str) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        (deployment,) = fleet.kubernetes("Deployment", RELAY)
        spec = deployment.manifest()["spec"]
        assert spec["replicas"] == 2  # one active (the lease), one standing by
        assert spec["strategy"]["rollingUpdate"] == {"maxSurge": 1, "maxUnavailable": 0}
        pod = spec["template"]["spec"]
        assert pod["automountServiceAccountToken"] is False
        assert "iofleet.io/secret-sha" in spec["template"]["metadata"]["annotations"]
        (container,) = pod["containers"]
        assert container["command"] == ["python", "-m", "relay"]
        env = {e["name"]: e for e in container["env"]}
        assert env["IOFLEET_RELAY_REQUIRE_TLS"]["value"] == "true"
        assert env["IOFLEET_RELAY_REGION"]["value"] == stack
        for name, key in (
            ("IOFLEET_RELAY_FAR_REDIS_URL", "far-redis-url"),
            ("IOFLEET_RELAY_REDIS_URL", "redis-url"),
        ):
            assert env[name]["valueFrom"]["secretKeyRef"] == {"name": RELAY, "key": key}
            assert "value" not in env[name]
        assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
        assert container["securityContext"]["runAsNonRoot"] is True

        (secret,) = fleet.kubernetes("Secret", RELAY)
        far = PEERS[stack]
        region = far.removeprefix("prod-")
        assert secret.inputs["stringData"]["far-redis-url"] == (
            f"{far}=rediss://:token-{region}@master.{region}.cache.amazonaws.com:6379/0"
        )
        assert "stringData" in secret.secrets  # reaches the engine as a Pulumi secret

        (pdb,) = fleet.kubernetes("PodDisruptionBudget", RELAY)
        assert pdb.manifest()["spec"] == {
            "minAvailable": 1,
            "selector": {"matchLabels": RELAY_LABELS},
        }
        refs = [r.inputs["name"] for r in fleet.of_type("pulumi:pulumi:StackReference")]
        assert refs == [f"acme/iofleet/{far}"]

    return after_deploy(check)


@pulumi.runtime.test
def test_a_region_without_peers_runs_no_relay() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        assert fleet.kubernetes("Deployment", RELAY) == []
        assert fleet.of_type("pulumi:pulumi:StackReference") == []

    return after_deploy(check)


@pulumi.runtime.test
def test_the_global_stack_peers_the_vpcs_with_routes_and_the_redis_port_only() -> Any:
    fleet = run_stack("global")

    def check() -> None:
        (peering,) = fleet.of_type("aws:ec2/vpcPeeringConnection:VpcPeeringConnection")
        assert peering.inputs["vpcId"] == "vpc-us-east-1"
        assert peering.inputs["peerVpcId"] == "vpc-eu-west-1"
        assert peering.inputs["peerRegion"] == "eu-west-1"
        (accepter,) = fleet.of_type(
            "aws:ec2/vpcPeeringConnectionAccepter:VpcPeeringConnectionAccepter"
        )
        assert accepter.inputs["autoAccept"] is True
        routes = fleet.of_type("aws:ec2/route:Route")
        assert sorted(
            (r.inputs["routeTableId"], r.inputs["destinationCidrBlock"]) for r in routes
        ) == [
            *((f"rtb-eu-west-1-{z}", "10.10.0.0/16") for z in "abc"),
            *((f"rtb-us-east-1-{z}", "10.20.0.0/16") for z in "abc"),
        ]
        assert all(r.inputs["vpcPeeringConnectionId"] for r in routes)
        rules = fleet.of_type("aws:ec2/securityGroupRule:SecurityGroupRule")
        assert sorted(
            (r.inputs["securityGroupId"], tuple(r.inputs["cidrBlocks"])) for r in rules
        ) == [
            ("sg-redis-eu-west-1", ("10.10.0.0/16",)),
            ("sg-redis-us-east-1", ("10.20.0.0/16",)),
        ]
        for rule in rules:
            assert rule.inputs["type"] == "ingress" and rule.inputs["protocol"] == "tcp"
            assert rule.inputs["fromPort"] == rule.inputs["toPort"] == 6379
        providers = fleet.of_type("pulumi:providers:aws")
        assert sorted(p.inputs["region"] for p in providers if "region-link" in p.name) == [
            "eu-west-1",
            "us-east-1",
        ]

    return after_deploy(check)


@pulumi.runtime.test
def test_the_policy_refuses_a_relay_without_tls_or_with_a_plain_far_url() -> Any:
    fleet = run_stack("prod-us-east-1")

    def check() -> None:
        assert violations("relay-far-redis-over-tls", fleet.resources) == []

        def no_tls(resources: Any) -> None:
            for item in relay_container(resources)["env"]:
                if item["name"] == "IOFLEET_RELAY_REQUIRE_TLS":
                    item["value"] = "false"

        found = violations("relay-far-redis-over-tls", broken(fleet, no_tls))
        assert len(found) == 1 and "REQUIRE_TLS" in found[0], found

        def plain_url(resources: Any) -> None:
            for item in relay_container(resources)["env"]:
                if item["name"] == "IOFLEET_RELAY_FAR_REDIS_URL":
                    item.pop("valueFrom")
                    item["value"] = "far=rediss://:token@far:6379/0"

        found = violations("relay-far-redis-over-tls", broken(fleet, plain_url))
        assert len(found) == 1 and "from a Secret" in found[0], found

    return after_deploy(check)


def test_region_peers_must_be_stack_names_once_each() -> None:
    for peers, message in ((["a", "a"], "twice"), (["Prod_EU"], "[a-z0-9-]")):
        result, problems, _ = validate({"region_peers": peers}, stack="dev", region="us-east-1")
        assert result is None
        assert any("iofleet:region_peers" in p and message in p for p in problems), problems


@pulumi.runtime.test
def test_cluster_mode_regions_give_their_relays_cluster_urls_the_relay_takes() -> Any:
    """Both regions in cluster mode (`redis_mode: cluster`): the relay's own URL and the
    far one are `rediss+cluster://` on the configuration endpoint (the servers' form),
    and the relay's settings accept them with TLS required (it refused any Cluster
    URL before issue 19's cluster support)."""
    fleet = run_stack(
        "prod-us-east-1",
        {"iofleet:redis_mode": "cluster", "iofleet:redis_shards": 3},
        mocks=FleetMocks(cluster_regions={"eu-west-1"}),
    )

    def check() -> None:
        (secret,) = fleet.kubernetes("Secret", RELAY)
        data = secret.inputs["stringData"]
        assert data["redis-url"] == (
            "rediss+cluster://:pw-redis-auth-token@clustercfg.iofleet.cache.amazonaws.com:6379"
        )
        assert data["far-redis-url"] == (
            "prod-eu-west-1=rediss+cluster://:token-eu-west-1"
            "@clustercfg.eu-west-1.cache.amazonaws.com:6379"
        )
        env = {e["name"]: e.get("value") for e in relay_container(fleet.resources)["env"]}
        settings = Settings(
            region=env["IOFLEET_RELAY_REGION"],
            redis_url=data["redis-url"],
            far_redis_url=data["far-redis-url"],
            require_tls=env["IOFLEET_RELAY_REQUIRE_TLS"] == "true",
        )
        (peer,) = settings.peer_list()
        far = parse_redis_url(peer.redis_url)
        assert (peer.region, far.topology, far.tls) == ("prod-eu-west-1", "cluster", True)
        assert parse_redis_url(settings.redis_url).topology == "cluster"

    return after_deploy(check)
