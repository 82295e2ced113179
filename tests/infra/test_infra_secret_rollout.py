"""Server pods read the Secret as environment variables at start, so a rotated value
reaches them only through a rollout (issue 24, "secrets rotate"): the pod template
carries a digest of the Secret's data."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import after_deploy, run_stack

from infra.workloads import content_sha


@pytest.mark.parametrize(
    "jwt_secret", ["first-secret-value-0123456789abcdef", "rotated-value-9876543210fedcba98"]
)
@pulumi.runtime.test
def test_the_pod_template_follows_the_secrets_content(jwt_secret: str) -> Any:
    fleet = run_stack("dev", {"iofleet:jwt_secret": jwt_secret})

    def check() -> None:
        (secret,) = fleet.kubernetes("Secret", "iofleet-server")
        data = secret.inputs["stringData"]
        assert data["jwt-secret"] == jwt_secret
        expected = content_sha("\n".join(f"{k}={data[k]}" for k in sorted(data)))
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
        notes = deployment.inputs["spec"]["template"]["metadata"]["annotations"]
        assert notes["iofleet.io/secret-sha"] == expected
        # The digest, never the values, is what the Deployment carries.
        assert jwt_secret not in str(deployment.inputs)

    return after_deploy(check)


OLD_JWT = "previous-jwt-secret-0123456789abcdefghij"
OLD_ADMIN = "previous-admin-token-0123456789"


def server_env(fleet: Any) -> dict[str, dict[str, Any]]:
    (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
    (container,) = deployment.inputs["spec"]["template"]["spec"]["containers"]
    return {entry["name"]: entry for entry in container["env"]}


@pulumi.runtime.test
def test_a_rotation_window_carries_the_previous_values_through_the_secret() -> Any:
    fleet = run_stack(
        "dev",
        {
            "iofleet:jwt_secret": "current-jwt-secret-0123456789abcdefghij",
            "iofleet:jwt_secret_previous": OLD_JWT,
            "iofleet:admin_token": "current-admin-token-0123456789",
            "iofleet:admin_token_previous": OLD_ADMIN,
        },
    )

    def check() -> None:
        (secret,) = fleet.kubernetes("Secret", "iofleet-server")
        data = secret.inputs["stringData"]
        assert data["jwt-secret-previous"] == OLD_JWT
        assert data["admin-token"] == "current-admin-token-0123456789"
        assert data["admin-token-previous"] == OLD_ADMIN
        # Pulumi keeps them secret in the state (the whole stringData arrives marked).
        assert any(path.startswith("stringData") for path in secret.secrets)
        env = server_env(fleet)
        for var, key in (
            ("IOFLEET_JWT_SECRET_PREVIOUS", "jwt-secret-previous"),
            ("IOFLEET_ADMIN_TOKEN_PREVIOUS", "admin-token-previous"),
            ("IOFLEET_ADMIN_TOKEN", "admin-token"),
        ):
            ref = env[var]["valueFrom"]["secretKeyRef"]
            assert ref == {"name": "iofleet-server", "key": key}
        # The operator's admin token replaces the generated one.
        assert not [
            r
            for r in fleet.of_type("random:index/randomPassword:RandomPassword")
            if "admin-token" in r.name
        ]
        (deployment,) = fleet.kubernetes("Deployment", "iofleet-server")
        assert OLD_JWT not in str(deployment.inputs) and OLD_ADMIN not in str(deployment.inputs)

    return after_deploy(check)


@pulumi.runtime.test
def test_outside_a_window_no_previous_value_reaches_the_pods() -> Any:
    fleet = run_stack("dev")

    def check() -> None:
        (secret,) = fleet.kubernetes("Secret", "iofleet-server")
        assert not {k for k in secret.inputs["stringData"] if k.endswith("-previous")}
        env = server_env(fleet)
        assert not {name for name in env if name.endswith("_PREVIOUS")}
        # Generated when the stack sets none.
        fleet.one("random:index/randomPassword:RandomPassword", "admin-token")

    return after_deploy(check)


@pulumi.runtime.test
def test_a_previous_public_key_is_plain_env() -> Any:
    pem = "-----BEGIN PUBLIC KEY-----\nprevious\n-----END PUBLIC KEY-----"
    fleet = run_stack(
        "dev",
        {"iofleet:jwt_public_key": "current-pem", "iofleet:jwt_public_key_previous": pem},
    )

    def check() -> None:
        env = server_env(fleet)
        assert env["IOFLEET_JWT_PUBLIC_KEY_PREVIOUS"]["value"] == pem
        assert "IOFLEET_JWT_SECRET" not in env

    return after_deploy(check)
