"""Connection state recovery is on in what the bundle deploys: the `recovery` stack keys
reach the server Deployment as the server's own `IOFLEET_RECOVERY*` variables, the
server accepts them, and a stack turns recovery off only by saying so."""

from __future__ import annotations

from typing import Any

import pulumi
import pytest
from pulumi_fleet import REGIONAL_STACKS, after_deploy, run_stack
from test_infra_config import config_error
from test_infra_server_contract import RUNTIME_VALUES, server_env

from server.settings import Settings


@pytest.mark.parametrize("stack", REGIONAL_STACKS)
@pulumi.runtime.test
def test_every_regional_stack_deploys_servers_with_recovery_on(stack: str, monkeypatch: Any) -> Any:
    fleet = run_stack(stack)

    def check() -> None:
        env = server_env(fleet)
        assert env["IOFLEET_RECOVERY"] == "true"
        assert env["IOFLEET_RECOVERY_WINDOW_SECONDS"] == "120"
        assert env["IOFLEET_RECOVERY_MAX_MESSAGES"] == "100000"
        for key, value in env.items():
            monkeypatch.setenv(key, value)
        settings = Settings()  # ElastiCache, cluster mode disabled: recovery is allowed
        assert settings.recovery and settings.recovery_window_seconds == 120
        assert settings.recovery_max_messages == 100_000

    return after_deploy(check)


@pulumi.runtime.test
def test_the_window_and_size_keys_reach_the_server() -> Any:
    overrides = {"iofleet:recovery_window_seconds": 300, "iofleet:recovery_max_messages": 250000}
    fleet = run_stack("dev", overrides)

    def check() -> None:
        env = server_env(fleet)
        assert env["IOFLEET_RECOVERY_WINDOW_SECONDS"] == "300"
        assert env["IOFLEET_RECOVERY_MAX_MESSAGES"] == "250000"

    return after_deploy(check)


@pulumi.runtime.test
def test_a_stack_opts_out_with_recovery_false(monkeypatch: Any) -> Any:
    fleet = run_stack("prod-us-east-1", {"iofleet:recovery": False})

    def check() -> None:
        env = server_env(fleet)
        assert env["IOFLEET_RECOVERY"] == "false"
        assert "IOFLEET_RECOVERY_WINDOW_SECONDS" not in env
        for key, value in {**RUNTIME_VALUES, **env}.items():
            monkeypatch.setenv(key, value)
        assert Settings().recovery is False

    return after_deploy(check)


@pytest.mark.parametrize(
    ("overrides", "fragments"),
    [
        ({"iofleet:recovery": "yes"}, ["iofleet:recovery", "true or false"]),
        ({"iofleet:recovery_window_seconds": 0}, ["iofleet:recovery_window_seconds", "1..86400"]),
        ({"iofleet:recovery_max_messages": 10}, ["iofleet:recovery_max_messages", "100.."]),
    ],
)
@pulumi.runtime.test
def test_bad_recovery_keys_are_named(overrides: dict[str, Any], fragments: list[str]) -> None:
    message = config_error("dev", overrides)
    for fragment in fragments:
        assert fragment in message, message
