"""Run the Pulumi program under mocks and record every resource it registers.

(A module of its own, not conftest.py, so `from pulumi_fleet import ...` cannot collide
with another test directory's conftest.)

No Pulumi CLI or cloud here: `pulumi.runtime.set_mocks(preview=False)` stands in for the
engine, mocked outputs are camelCase like the providers', and the stack config is what
the CLI would pass - Pulumi.yaml's defaults overlaid by Pulumi.<stack>.yaml.
Tests run in their own pytest call with `-p no:asyncio`: Pulumi drives its own loop.
"""

from __future__ import annotations

import copy
import hashlib
import json
import os
import runpy
from collections.abc import Callable, Coroutine
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pulumi
import yaml
from pulumi.runtime.stack import wait_for_rpcs

ROOT = Path(__file__).resolve().parents[2]
PROGRAM = ROOT / "infra" / "__main__.py"
STACKS = ("dev", "prod-us-east-1", "prod-eu-west-1", "global")
REGIONAL_STACKS = ("dev", "prod-us-east-1", "prod-eu-west-1")


# What an operator puts in place of the stack files' placeholders (which the program
# refuses: tests/infra/test_infra_first_up.py). 444455556666 is just another account id.
OPERATOR_VALUES: dict[str, dict[str, Any]] = {
    "dev": {
        "iofleet:cluster_public_access_cidrs": ["18.204.10.0/24"],
        "iofleet:image": "444455556666.dkr.ecr.us-west-2.amazonaws.com/iofleet-server:0.1.0",
        "iofleet:autoscaler_image": (
            "444455556666.dkr.ecr.us-west-2.amazonaws.com/iofleet-autoscaler:0.1.0"
        ),
        "iofleet:cors_origins": ["https://dev.acme.io"],
    },
    "global": {"iofleet:domain": "ws.acme.io", "iofleet:hosted_zone_id": "Z08142981AB2CDEFGH"},
}
for _region in ("us-east-1", "eu-west-1"):
    _registry = f"444455556666.dkr.ecr.{_region}.amazonaws.com"
    OPERATOR_VALUES[f"prod-{_region}"] = {
        "iofleet:cluster_public_access_cidrs": ["18.204.10.0/24"],
        "iofleet:image": f"{_registry}/iofleet-server@sha256:{'4c' * 32}",
        "iofleet:autoscaler_image": f"{_registry}/iofleet-autoscaler@sha256:{'9a' * 32}",
        "iofleet:cors_origins": ["https://app.acme.io"],
        "iofleet:certificate_arn": (
            f"arn:aws:acm:{_region}:444455556666:certificate/6f1c2b9e-1d2a-4c5b-8e7f-0a1b2c3d4e5f"
        ),
        "iofleet:alarm_email": "oncall@acme.io",
    }


def _mock_id(typ: str, name: str) -> str:
    """Physical ids; subnets and security groups shaped like AWS's (EC2NodeClass selector
    terms match `subnet-[0-9a-z]+` and `sg-[0-9a-z]+`)."""
    prefixes = {"aws:ec2/subnet:Subnet": "subnet-", "aws:ec2/securityGroup:SecurityGroup": "sg-"}
    if typ in prefixes:
        return prefixes[typ] + hashlib.sha1(name.encode()).hexdigest()[:17]
    return f"{name}-id"


SECRET_SIG = "4dabf18193072939515e22adb298388d"
"""The key Pulumi's wire format marks a secret value with."""


def unwrap_secrets(value: Any, path: str, found: set[str]) -> Any:
    """Plain values for the tests; `found` collects the dotted paths that were secret."""
    if isinstance(value, dict) and SECRET_SIG in value:
        found.add(path)
        return unwrap_secrets(value.get("value"), path, found)
    if isinstance(value, dict):
        return {k: unwrap_secrets(v, f"{path}.{k}".strip("."), found) for k, v in value.items()}
    if isinstance(value, list):
        return [unwrap_secrets(v, f"{path}[{i}]", found) for i, v in enumerate(value)]
    return value


@dataclass
class Recorded:
    type: str
    name: str
    inputs: dict[str, Any]
    secrets: set[str]
    """Dotted paths of inputs that arrived as Pulumi secrets."""

    @property
    def is_kubernetes(self) -> bool:
        return self.type.startswith("kubernetes:") and "apiVersion" in self.inputs

    def manifest(self) -> dict[str, Any]:
        """The Kubernetes object as it would be applied: inputs are camelCase already;
        numbers cross the mock boundary as floats and go back to JSON integers."""
        return _integral(copy.deepcopy(self.inputs))


def _integral(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {k: _integral(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_integral(v) for v in value]
    return value


def _lb_outputs(name: str) -> dict[str, Any]:
    return {
        "arn": f"arn:aws:elasticloadbalancing:us-east-1:111122223333:loadbalancer/app/{name}/1",
        "arnSuffix": f"app/{name}/1",
        "zoneId": "Z35SXDOTRQ7X7K",
        "dnsName": f"{name}.elb.amazonaws.com",
    }


HTTP_REGION = "eu-west-1"
"""The regional stack the mocked StackReference reports as serving plain HTTP."""

REGIONAL_OUTPUTS = {
    "region": "us-east-1",
    "public_hostname": "iofleet-pub-123.us-east-1.elb.amazonaws.com",
    "balancer_arn": "arn:aws:elasticloadbalancing:us-east-1:111122223333:loadbalancer/app/x/1",
    "balancer_zone_id": "Z35SXDOTRQ7X7K",
    "public_scheme": "https",
    "balancer": "alb",
}


def _network_outputs(region: str, cluster: bool = False) -> dict[str, Any]:
    """What a regional stack exports for the inter-region link (infra/region_link.py),
    with the example stacks' CIDRs; `cluster`: its Redis runs in cluster mode (the URL
    infra/elasticache.py makes from the configuration endpoint)."""
    cidr = {"us-east-1": "10.10.0.0/16", "eu-west-1": "10.20.0.0/16"}.get(region, "10.0.0.0/16")
    redis_url = (
        f"rediss+cluster://:token-{region}@clustercfg.{region}.cache.amazonaws.com:6379"
        if cluster
        else f"rediss://:token-{region}@master.{region}.cache.amazonaws.com:6379/0"
    )
    return {
        "vpc_id": f"vpc-{region}",
        "vpc_cidr": cidr,
        "private_route_table_ids": [f"rtb-{region}-{zone}" for zone in "abc"],
        "redis_security_group_id": f"sg-redis-{region}",
        "redis_url": redis_url,
    }


CALLER_ROLE = "arn:aws:iam::444455556666:role/ci-deployer"
"""Who the mocked AWS says runs `up` (an assumed-role session of this role)."""


class FleetMocks(pulumi.runtime.Mocks):
    """Echo inputs back as outputs, plus the computed outputs the program reads."""

    def __init__(
        self,
        caller_role: str = CALLER_ROLE,
        balancers: dict[str, str] | None = None,
        cluster_regions: set[str] | None = None,
    ) -> None:
        self.caller_role = caller_role
        self.balancers = balancers or {}
        """Region -> the `balancer` its mocked regional stack reports (default alb)."""
        self.cluster_regions = cluster_regions or set()
        """Regions whose mocked regional stack runs Redis in cluster mode."""
        self.resources: list[Recorded] = []
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.ignore_changes: dict[str, list[str]] = {}
        """Resource name -> ignore_changes, read off the registration by RecordingMonitor."""
        self.dependencies: dict[str, set[str]] = {}
        """Resource name -> names of the resources it waits for (depends_on and inputs)."""

    def new_resource(self, args: pulumi.runtime.MockResourceArgs) -> tuple[str, dict[str, Any]]:
        secrets: set[str] = set()
        inputs = unwrap_secrets(dict(args.inputs), "", secrets)
        self.resources.append(Recorded(args.typ, args.name, inputs, secrets))
        outputs = {**args.inputs, **self._computed(args.typ, args.name, inputs)}
        return _mock_id(args.typ, args.name), outputs

    def _computed(self, typ: str, name: str, inputs: dict[str, Any]) -> dict[str, Any]:
        common = {"arn": f"arn:aws:mock:::{name}", "name": inputs.get("name", name)}
        hostname = {"loadBalancer": {"ingress": [{"hostname": f"{name}.elb.amazonaws.com"}]}}
        extra: dict[str, dict[str, Any]] = {
            "aws:eks/cluster:Cluster": {
                "endpoint": "https://ABC.gr7.us-east-1.eks.amazonaws.com",
                "certificateAuthority": {"data": "Y2E="},
                "identities": [{"oidcs": [{"issuer": "https://oidc.eks.aws/id/ABC"}]}],
                "vpcConfig": {**inputs.get("vpcConfig", {}), "clusterSecurityGroupId": "sg-c"},
            },
            "aws:elasticache/replicationGroup:ReplicationGroup": {
                # AWS answers one of the two, by cluster mode.
                **(
                    {"configurationEndpointAddress": "clustercfg.iofleet.cache.amazonaws.com"}
                    if inputs.get("clusterMode") == "enabled"
                    else {"primaryEndpointAddress": "master.iofleet.cache.amazonaws.com"}
                ),
            },
            "random:index/randomPassword:RandomPassword": {"result": f"pw-{name}"},
            "kubernetes:networking.k8s.io/v1:Ingress": {"status": hostname},
            "kubernetes:core/v1:Service": {"status": hostname},
            "aws:globalaccelerator/accelerator:Accelerator": {
                "dnsName": "a1.awsglobalaccelerator.com"
            },
            "pulumi:pulumi:StackReference": {
                "outputs": {
                    **REGIONAL_OUTPUTS,
                    **_network_outputs(
                        _region_of(inputs.get("name", name)),
                        _region_of(inputs.get("name", name)) in self.cluster_regions,
                    ),
                    "region": _region_of(inputs.get("name", name)),
                    "balancer": self.balancers.get(_region_of(inputs.get("name", name)), "alb"),
                    # One region without a certificate, to show what differs for it.
                    "public_scheme": (
                        "http" if _region_of(inputs.get("name", name)) == HTTP_REGION else "https"
                    ),
                },
                "secretOutputNames": ["redis_url"],
            },
        }
        return {**common, **extra.get(typ, {})}

    def call(self, args: pulumi.runtime.MockCallArgs) -> tuple[dict[str, Any], None] | dict:
        self.calls.append((args.token, dict(args.args)))
        if args.token == "aws:index/getAvailabilityZones:getAvailabilityZones":
            return {"names": ["az-a", "az-b", "az-c", "az-d"], "zoneIds": ["1", "2", "3", "4"]}
        if args.token == "aws:index/getCallerIdentity:getCallerIdentity":
            account, role = self.caller_role.split(":")[4], self.caller_role.split("/")[-1]
            return {
                "accountId": account,
                "arn": f"arn:aws:sts::{account}:assumed-role/{role}/pulumi-up",
                "userId": f"AROAEXAMPLE:{role}",
                "id": account,
            }
        if args.token == "aws:iam/getSessionContext:getSessionContext":
            # STS: an assumed-role session's issuer is its role; an IAM user is itself.
            arn = str(args.args["arn"])
            if ":assumed-role/" not in arn:
                return {"arn": arn, "issuerArn": arn, "id": arn}
            account = arn.split(":")[4]
            role = arn.split("/")[1]
            return {
                "arn": arn,
                "issuerArn": f"arn:aws:iam::{account}:role/{role}",
                "issuerName": role,
                "sessionName": arn.split("/")[2],
                "id": arn,
            }
        if args.token == "aws:index/getPartition:getPartition":
            return {"partition": "aws", "dnsSuffix": "amazonaws.com", "id": "aws"}
        if args.token == "aws:lb/getLoadBalancer:getLoadBalancer":
            return _lb_outputs(str(args.args.get("name", "lb")))
        if args.token == "aws:lb/getTargetGroup:getTargetGroup" and "arn" not in args.args:
            # AWS: a tag search must match exactly one target group, and the controller
            # makes one per listener port (ingress-nginx: 80 and 443).
            raise RuntimeError("getTargetGroup: Search returned 2 results, expected exactly 1")
        if args.token == "aws:lb/getListener:getListener":
            port = int(args.args["port"])
            arn = f"arn:aws:elasticloadbalancing:us-east-1:111122223333:targetgroup/k8s-{port}/1"
            return {
                "arn": f"{args.args['loadBalancerArn']}/listener/{port}",
                "port": port,
                "defaultActions": [{"type": "forward", "targetGroupArn": arn}],
            }
        return {}

    # --- queries used by the tests
    def of_type(self, typ: str) -> list[Recorded]:
        return [r for r in self.resources if r.type == typ]

    def one(self, typ: str, name_contains: str = "") -> Recorded:
        found = [r for r in self.of_type(typ) if name_contains in r.name]
        assert len(found) == 1, (
            f"expected one {typ} ~{name_contains!r}, got {[r.name for r in found]}"
        )
        return found[0]

    def kubernetes(self, kind: str, name: str | None = None) -> list[Recorded]:
        return [
            r
            for r in self.resources
            if r.is_kubernetes
            and r.inputs.get("kind") == kind
            and (name is None or r.inputs.get("metadata", {}).get("name") == name)
        ]


class RecordingMonitor(pulumi.runtime.mocks.MockMonitor):
    """Resource options (ignore_changes) travel beside the inputs; record them too."""

    def __init__(self, mocks: FleetMocks) -> None:
        super().__init__(mocks)
        self.fleet = mocks

    def RegisterResource(self, request: Any) -> Any:
        if request.ignoreChanges:
            self.fleet.ignore_changes[request.name] = list(request.ignoreChanges)
        waits = set(request.dependencies)
        for deps in request.propertyDependencies.values():
            waits.update(deps.urns)
        self.fleet.dependencies[request.name] = {urn.rsplit("::", 1)[-1] for urn in waits}
        return super().RegisterResource(request)


def _region_of(stack: str) -> str:
    return stack.rsplit("/", 1)[-1].removeprefix("prod-")


def project_defaults() -> dict[str, Any]:
    project = yaml.safe_load((ROOT / "Pulumi.yaml").read_text())
    return {f"iofleet:{k}": v["default"] for k, v in project["config"].items()}


def stack_config(
    stack: str, overrides: dict[str, Any] | None = None, *, as_shipped: bool = False
) -> dict[str, str]:
    """What the CLI passes the program: project defaults, then the stack file (with the
    operator's values in place of its placeholders, unless `as_shipped`), as strings."""
    stack_file = yaml.safe_load((ROOT / f"Pulumi.{stack}.yaml").read_text())
    operator = {} if as_shipped else OPERATOR_VALUES.get(stack, {})
    merged = {**project_defaults(), **stack_file["config"], **operator, **(overrides or {})}
    return {k: _as_string(v) for k, v in merged.items() if v is not None}


def _as_string(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, bool):
        return "true" if value else "false"
    return json.dumps(value)


def use_config(config: dict[str, str]) -> None:
    """Hand the program its config the way the Python language host does: the runtime's
    config map and the PULUMI_CONFIG environment variable (JSON of every key)."""
    pulumi.runtime.set_all_config(config)
    os.environ["PULUMI_CONFIG"] = json.dumps(config)


def run_stack(
    stack: str, overrides: dict[str, Any] | None = None, *, mocks: FleetMocks | None = None
) -> FleetMocks:
    """Run infra/__main__.py under fresh mocks for `stack`; returns the recorder."""
    mocks = mocks or FleetMocks()
    pulumi.runtime.set_mocks(
        mocks,
        project="iofleet",
        stack=stack,
        organization="acme",
        preview=False,
        monitor=RecordingMonitor(mocks),
    )
    use_config(stack_config(stack, overrides))
    runpy.run_path(str(PROGRAM), run_name="__main__")
    return mocks


async def deployed(
    stack: str, overrides: dict[str, Any] | None = None, *, mocks: FleetMocks | None = None
) -> FleetMocks:
    """run_stack, then wait until every registration it queued has completed. A test that
    runs two stacks must let the first settle before the second replaces the mocks, or
    the first one's later registrations land in the second's recorder."""
    fleet = run_stack(stack, overrides, mocks=mocks)
    await wait_for_rpcs(await_all_outstanding_tasks=False)
    return fleet


def after_deploy(check: Callable[[], None]) -> Coroutine[Any, Any, None]:
    """Run `check` once every registration the program queued has completed; return this
    from a @pulumi.runtime.test function so pulumi awaits it."""

    async def settled() -> None:
        await wait_for_rpcs(await_all_outstanding_tasks=False)
        check()

    return settled()
