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
    "jwt_secret", ["first-secret-value-0123456789", "rotated-value-9876543210"]
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
