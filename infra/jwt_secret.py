"""The JWT verification secrets the servers get, when the stack uses HS256."""

from __future__ import annotations

import pulumi
import pulumi_random as random

from infra.config import RegionalConfig


def jwt_secret(cfg: RegionalConfig) -> pulumi.Output[str] | None:
    """None with a public key (RS/ES tokens); the operator's secret if set; otherwise a
    generated one, exported as a stack secret so the token issuer can share it."""
    if cfg.jwt_public_key:
        return None
    if cfg.jwt_secret.get_secret_value():
        return pulumi.Output.secret(cfg.jwt_secret.get_secret_value())
    generated = random.RandomPassword("jwt-secret", length=64, special=False)
    return pulumi.Output.secret(generated.result)


def previous_jwt_secret(cfg: RegionalConfig) -> pulumi.Output[str] | None:
    """During a rotation window, the HS256 secret the servers still accept besides the
    current one (docs/infra.md, "Rotating a secret"); None outside a window."""
    if cfg.jwt_secret_previous.get_secret_value():
        return pulumi.Output.secret(cfg.jwt_secret_previous.get_secret_value())
    return None
