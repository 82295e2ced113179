"""`iofleet plan` and `iofleet rollout` report a configuration problem as one line and
exit 2 before any work: the rollout's --from-wave is checked with its file (before the
Pulumi CLI is looked for), and a long message is not wrapped over several lines."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from iofleet.cli import app

ROLLOUT = Path(__file__).resolve().parents[2] / "examples" / "rollout.yaml"


def test_rollout_checks_from_wave_before_anything_else() -> None:
    # No Pulumi CLI here either: the bad wave must be what is reported.
    result = CliRunner().invoke(
        app, ["rollout", "--config", str(ROLLOUT), "--from-wave", "no-such-wave"]
    )
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "--from-wave 'no-such-wave' is not one of" in lines[0], lines


def test_plan_error_is_one_line_however_long(tmp_path: Path) -> None:
    missing = tmp_path / ("a-rather-long-directory-name-" * 3) / "capacity.json"
    result = CliRunner().invoke(app, ["plan", "--connections", "1000", "--capacity", str(missing)])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], lines


def test_rollout_file_error_is_one_line_however_long(tmp_path: Path) -> None:
    missing = tmp_path / ("a-rather-long-directory-name-" * 3) / "rollout.yaml"
    result = CliRunner().invoke(app, ["rollout", "--config", str(missing), "--plan"])
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and str(missing) in lines[0], lines
