"""The load test's parts that need no server: scenarios, templates, histograms."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from typer.testing import CliRunner

from iofleet.cli import app
from iofleet.loadtest.capacity import parse_metric
from iofleet.loadtest.scenario import ScenarioError, Templater, load_scenario
from iofleet.loadtest.stats import Histogram, Tick, Totals

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "loadtest"


def test_every_bundled_scenario_loads() -> None:
    names = sorted(p.name for p in EXAMPLES.glob("*.yml"))
    assert {"chat-rooms.yml", "broadcast-room.yml", "connection-storm.yml"} <= set(names)
    assert "reconnect-storm.yml" in names
    for name in names:
        assert load_scenario(EXAMPLES / name).duration > 0


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("config: {phases: []}\nscenarios: [{flow: [connect]}]", "config.phases"),
        ("config: {phases: [{duration: 1}]}\nscenarios: [{flow: [{think: 1, join: a}]}]", "flow"),
        (
            "config: {phases: [{duration: 1, arivalRate: 3}]}\nscenarios: [{flow: [connect]}]",
            "ariv",
        ),
        (
            "config: {phases: [{duration: 1}]}\nscenarios: [{flow: [{connect: {auth: token}}]}]",
            "token",
        ),
        ("config: [", "scenario.yml"),
    ],
)
def test_a_bad_scenario_is_one_line_naming_the_field(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "scenario.yml"
    path.write_text(text)
    with pytest.raises(ScenarioError) as caught:
        load_scenario(path)
    assert where in str(caught.value)
    result = CliRunner().invoke(app, ["loadtest", str(path), "--target", "http://127.0.0.1:9"])
    assert result.exit_code == 2 and "Traceback" not in result.output


def test_templates_fill_variables_functions_and_keep_types() -> None:
    templater = Templater({"vu": 7, "room": "r1"}, random.Random(1), lambda: "MARK")
    filled = templater.fill(
        {"room": "{{ room }}", "n": "{{ vu }}", "text": "hi {{vu}} {{ $mark }}", "k": [1, "x"]}
    )
    assert filled == {"room": "r1", "n": 7, "text": "hi 7 MARK", "k": [1, "x"]}
    number = templater.fill("{{ $randomNumber(3, 5) }}")
    assert number in {3, 4, 5}
    assert len(templater.fill("{{ $randomString(6) }}")) == 6
    with pytest.raises(ScenarioError, match="nope"):
        templater.fill("{{ nope }}")


def test_histogram_percentiles_within_two_percent_and_merge() -> None:
    rng = random.Random(3)
    values = [rng.lognormvariate(1, 1) for _ in range(20_000)]
    left, right = Histogram(), Histogram()
    for index, value in enumerate(values):
        (left if index % 2 else right).record(value)
    left.merge(right)
    ordered = sorted(values)
    for p in (50, 95, 99):
        exact = ordered[int(len(ordered) * p / 100) - 1]
        assert left.percentile(p) == pytest.approx(exact, rel=0.025), p
    assert left.max == max(values) and left.count == len(values)


def test_totals_merge_processes_second_by_second() -> None:
    totals = Totals()
    for worker in range(3):
        for second in range(2):
            tick = Tick(second=second, connections=10 + worker, emitted=5)
            tick.error("refused", "HTTP 503")
            totals.add(tick)
    summary = totals.summary()
    assert summary["emitted"] == 30 and summary["errors"]["refused"] == 6
    assert summary["peak_connections"] == 33  # 10 + 11 + 12 in one second
    assert summary["error_reasons"] == {"refused: HTTP 503": 6}


def test_parse_metric_reads_unlabelled_samples_only() -> None:
    text = (
        "# HELP iofleet_connections x\niofleet_connections 42.0\n"
        'iofleet_connections_rejected_total{reason="capacity"} 3.0\n'
        "iofleet_event_loop_lag_seconds 0.004\n"
    )
    assert parse_metric(text, "iofleet_connections") == 42
    assert parse_metric(text, "iofleet_event_loop_lag_seconds") == 0.004
    assert parse_metric(text, "iofleet_rooms") is None
