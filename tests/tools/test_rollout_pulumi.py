"""`PulumiStacks` against the real Automation API types (no Pulumi CLI can run here).

`select_stack` is replaced by a stand-in stack whose results are built from the
real `PreviewResult`, `UpResult`, `UpdateSummary`, `OutputValue` and `CommandError`
classes, so a change in those surfaces fails here, naming what moved.
"""

from __future__ import annotations

import datetime
import inspect
from pathlib import Path
from typing import Any

import pytest
from pulumi import automation
from typer.testing import CliRunner

from iofleet import rollout
from iofleet.cli import app
from iofleet.rollout import PulumiStacks, StackOpsError


def test_the_automation_surface_we_call_is_there() -> None:
    assert {"stack_name", "work_dir"} <= set(inspect.signature(automation.select_stack).parameters)
    for method in ("preview", "up"):
        params = inspect.signature(getattr(automation.Stack, method)).parameters
        assert "on_output" in params, f"Stack.{method} lost on_output"
    assert "outputs" in dir(automation.Stack)
    assert {"change_summary"} <= set(inspect.signature(automation.PreviewResult).parameters)
    assert {"summary", "outputs"} <= set(inspect.signature(automation.UpResult).parameters)
    assert {"value", "secret"} <= set(inspect.signature(automation.OutputValue).parameters)


class FakeStack:
    def __init__(self, fail: bool = False) -> None:
        self.fail = fail
        self.seen: list[str] = []

    def _maybe_fail(self) -> None:
        if self.fail:
            raise automation.CommandError(
                automation.CommandResult(stdout="", stderr="error: update failed: quota", code=1)
            )

    def preview(self, on_output: Any) -> automation.PreviewResult:
        self._maybe_fail()
        on_output("previewing")
        return automation.PreviewResult(
            stdout="",
            stderr="",
            change_summary={automation.OpType.UPDATE: 2, automation.OpType.SAME: 40},
        )

    def up(self, on_output: Any) -> automation.UpResult:
        self._maybe_fail()
        on_output("updating")
        summary = automation.UpdateSummary(
            kind="update",
            start_time=datetime.datetime.now(),
            message="",
            environment={},
            config={},
            result="succeeded",
        )
        return automation.UpResult(stdout="", stderr="", summary=summary, outputs=self.outputs())

    def outputs(self) -> dict[str, automation.OutputValue]:
        return {
            "public_hostname": automation.OutputValue("lb.example.com", False),
            "jwt_secret": automation.OutputValue("s3cret", True),
        }


@pytest.fixture
def pulumi_cli_on_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The CLI is not installed here; PulumiStacks only checks that it is there."""
    monkeypatch.setattr(rollout.shutil, "which", lambda name: f"/usr/local/bin/{name}")


@pytest.mark.usefixtures("pulumi_cli_on_path")
def test_pulumi_stacks_maps_results_and_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    stack = FakeStack()
    calls: list[dict[str, Any]] = []

    def select_stack(**kwargs: Any) -> FakeStack:
        calls.append(kwargs)
        return stack

    monkeypatch.setattr(automation, "select_stack", select_stack)
    stacks = PulumiStacks(Path("/work/project"))
    lines: list[str] = []
    assert stacks.preview("prod-eu-west-1", lines.append).changes == {"update": 2, "same": 40}
    up = stacks.up("prod-eu-west-1", lines.append)
    assert up.result == "succeeded"
    assert up.outputs == {"public_hostname": "lb.example.com"}  # the secret stays out
    assert lines == ["previewing", "updating"]
    assert calls[0] == {"stack_name": "prod-eu-west-1", "work_dir": "/work/project"}


@pytest.mark.usefixtures("pulumi_cli_on_path")
def test_pulumi_errors_become_stack_ops_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(automation, "select_stack", lambda **kwargs: FakeStack(fail=True))
    with pytest.raises(StackOpsError, match="quota"):
        PulumiStacks(Path()).up("prod-eu-west-1", print)


def test_without_the_pulumi_cli_the_command_says_so_in_one_line(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setattr(rollout.shutil, "which", lambda name: None)
    path = tmp_path / "rollout.yaml"
    path.write_text("waves:\n  - {name: canary, stacks: [prod-eu-west-1]}\n")
    result = CliRunner().invoke(app, ["rollout", "--config", str(path)])
    assert result.exit_code == 2
    assert "Pulumi CLI is not on PATH" in result.output and "Traceback" not in result.output
