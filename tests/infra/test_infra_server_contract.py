"""The server Deployment the program renders starts a server the real settings accept:
every `IOFLEET_` variable it sets exists and validates, so infra and server cannot drift."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, FleetMocks, after_deploy, run_stack

from server.net.redis_topology import parse_redis_url
from server.settings import Settings

# Stand-ins for what Kubernetes fills in at run time (Secrets, the downward API);
# IOFLEET_REDIS_URL is the one the program renders into the server's Secret.
RUNTIME_VALUES = {
    "IOFLEET_NODE_ID": "iofleet-server-7d9f-abcde",
    "IOFLEET_ADMIN_TOKEN": "admin-token-from-secret",
    "IOFLEET_JWT_SECRET": "j" * 64,
}


def server_env(fleet: FleetMocks) -> dict[str, str]:
    deployment = next(
        r.manifest()
        for r in fleet.resources
        if r.is_kubernetes
        and r.inputs["kind"] == "Deployment"
        and r.inputs["metadata"]["name"] == "iofleet-server"
    )
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    (secret,) = fleet.kubernetes("Secret", "iofleet-server")
    runtime = {**RUNTIME_VALUES, "IOFLEET_REDIS_URL": secret.inputs["stringData"]["redis-url"]}
    env: dict[str, str] = {}
    for var in container["env"]:
        env[var["name"]] = str(var["value"]) if "value" in var else runtime[var["name"]]
    return env


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_server_env_is_accepted_by_the_server(stack: str, monkeypatch: Any) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        env = server_env(fleet)
        known = {f"IOFLEET_{name.upper()}" for name in Settings.model_fields}
        assert {k for k in env if k.startswith("IOFLEET_")} <= known
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()
        assert settings.auth == "jwt" and settings.admin_token is not None
        assert settings.redis_url is not None
        # ElastiCache, cluster mode disabled: one Redis over TLS with the AUTH token.
        redis = parse_redis_url(settings.redis_url)
        assert (redis.topology, redis.tls) == ("single", True)
        assert redis.options["password"] == "pw-redis-auth-token"
        assert "pw-redis-auth-token" not in str(redis)  # what logs and errors show
        assert settings.admin_port == 9000 and settings.port == 8000

    return after_deploy(check)
