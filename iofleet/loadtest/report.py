"""Results: a live panel while running, a table at the end, JSON, and an HTML page.

The HTML page is self-contained (inline SVG, no scripts, no CDN): latency,
connections, throughput and errors over time.
"""

from __future__ import annotations

import html
from collections.abc import Mapping, Sequence
from typing import Any

from rich.table import Table

from iofleet.loadtest.stats import ERROR_KINDS, Histogram, Tick, Totals


def live_panel(tick: Tick, errors_so_far: Mapping[str, int]) -> Table:
    """The last second's figures, with every error counted since the start."""
    table = Table(title="load test", title_justify="left")
    for column in ("second", "phase", "users", "connections", "emit/s", "deliver/s", "ack p99"):
        table.add_column(column, justify="right")
    table.add_column("errors so far")
    errors = ", ".join(f"{k} {v}" for k, v in sorted(errors_so_far.items()) if v) or "none"
    table.add_row(
        str(tick.second),
        tick.phase,
        str(tick.vusers),
        str(tick.connections),
        str(tick.emitted),
        str(tick.delivered),
        f"{tick.ack_ms.percentile(99):.1f} ms",
        errors,
    )
    return table


def summary_table(summary: dict[str, Any]) -> Table:
    table = Table(title="load test results", title_justify="left")
    table.add_column("measure")
    for column in ("count", "p50", "p95", "p99", "max"):
        table.add_column(column, justify="right")
    for name, key in (
        ("connect time, ms", "connect_ms"),
        ("ack round trip, ms", "ack_ms"),
        ("delivery latency, ms", "delivery_ms"),
    ):
        h = summary[key]
        table.add_row(name, str(h["count"]), *(f"{h[p]:.2f}" for p in ("p50", "p95", "p99", "max")))
    table.add_section()
    table.add_row("peak connections", str(summary["peak_connections"]), "", "", "", "")
    table.add_row("messages sent/s", str(summary["emitted_per_second"]), "", "", "", "")
    table.add_row("deliveries/s", str(summary["delivered_per_second"]), "", "", "", "")
    table.add_section()
    for kind in ERROR_KINDS:
        table.add_row(f"errors: {kind}", str(summary["errors"][kind]), "", "", "", "")
    return table


# --- HTML -----------------------------------------------------------------------------

_COLORS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd")
_W, _H, _PAD_L, _PAD_B, _PAD_T = 780, 220, 80, 30, 14


def _short(value: float) -> str:
    for size, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= size:
            return f"{value / size:.3g}{suffix}"
    return f"{value:.3g}"


def svg_chart(
    title: str, unit: str, xs: Sequence[float], series: dict[str, Sequence[float | None]]
) -> str:
    """A line chart of several series over the same x axis (seconds); a None leaves a gap."""
    top = max([v for values in series.values() for v in values if v is not None] + [0]) or 1.0
    right = max(xs, default=1) or 1
    plot_w, plot_h = _W - _PAD_L - 10, _H - _PAD_B - _PAD_T

    def point(x: float, y: float) -> str:
        return f"{_PAD_L + x / right * plot_w:.1f},{_PAD_T + plot_h - y / top * plot_h:.1f}"

    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{_W}" height="{_H + 20}" '
        f'role="img" aria-label="{html.escape(title)}">',
        f'<text x="{_PAD_L}" y="10" font-size="12" font-weight="bold">{html.escape(title)}</text>',
        f'<line x1="{_PAD_L}" y1="{_PAD_T + plot_h}" x2="{_W - 10}" y2="{_PAD_T + plot_h}" '
        'stroke="#888"/>',
        f'<line x1="{_PAD_L}" y1="{_PAD_T}" x2="{_PAD_L}" y2="{_PAD_T + plot_h}" stroke="#888"/>',
    ]
    for fraction in (0, 0.5, 1):
        y = _PAD_T + plot_h - fraction * plot_h
        parts.append(
            f'<text x="{_PAD_L - 4}" y="{y + 4:.1f}" font-size="10" text-anchor="end">'
            f"{_short(top * fraction)} {html.escape(unit)}</text>"
        )
        parts.append(
            f'<line x1="{_PAD_L}" y1="{y:.1f}" x2="{_W - 10}" y2="{y:.1f}" stroke="#eee"/>'
        )
    for fraction in (0, 0.25, 0.5, 0.75, 1):
        x = _PAD_L + fraction * plot_w
        parts.append(
            f'<text x="{x:.1f}" y="{_PAD_T + plot_h + 14}" font-size="10" text-anchor="middle">'
            f"{right * fraction:.0f} s</text>"
        )
    for index, (name, values) in enumerate(series.items()):
        color = _COLORS[index % len(_COLORS)]
        runs: list[list[str]] = [[]]
        for second, value in zip(xs, values, strict=False):
            if value is None:
                runs.append([])
            else:
                runs[-1].append(point(second, value))
        for run in runs:
            if len(run) == 1:
                cx, cy = run[0].split(",")
                parts.append(f'<circle cx="{cx}" cy="{cy}" r="2" fill="{color}"/>')
            elif run:
                parts.append(
                    f'<polyline fill="none" stroke="{color}" stroke-width="1.5" '
                    f'points="{" ".join(run)}"/>'
                )
        parts.append(
            f'<text x="{_PAD_L + 10 + index * 150}" y="{_H + 14}" font-size="11" '
            f'fill="{color}">■ {html.escape(name)}</text>'
        )
    parts.append("</svg>")
    return "\n".join(parts)


def _p(histogram: Histogram, p: float) -> float | None:
    """A second with no samples has no latency (a gap, not a zero)."""
    return histogram.percentile(p) if histogram.count else None


def html_report(
    title: str, totals: Totals, summary: dict[str, Any], notes: Sequence[str] = ()
) -> str:
    ticks = totals.ticks
    xs = [float(t.second) for t in ticks]
    charts = [
        svg_chart(
            "latency (per second)",
            "ms",
            xs,
            {
                "ack p50": [_p(t.ack_ms, 50) for t in ticks],
                "ack p99": [_p(t.ack_ms, 99) for t in ticks],
                "delivery p99": [_p(t.delivery_ms, 99) for t in ticks],
                "connect p99": [_p(t.connect_ms, 99) for t in ticks],
            },
        ),
        svg_chart("connections", "", xs, {"open connections": [t.connections for t in ticks]}),
        svg_chart(
            "throughput",
            "/s",
            xs,
            {
                "messages sent": [t.emitted for t in ticks],
                "deliveries": [t.delivered for t in ticks],
            },
        ),
        svg_chart(
            "errors",
            "/s",
            xs,
            {kind: [t.errors.get(kind, 0) for t in ticks] for kind in ERROR_KINDS},
        ),
    ]
    rows = []
    for name, key in (
        ("connect time", "connect_ms"),
        ("ack round trip", "ack_ms"),
        ("delivery latency", "delivery_ms"),
    ):
        h = summary[key]
        cells = "".join(f"<td>{h[p]:.2f}</td>" for p in ("p50", "p95", "p99", "max"))
        rows.append(f"<tr><th>{name}, ms</th><td>{h['count']}</td>{cells}</tr>")
    errors = "".join(
        f"<tr><th>{kind}</th><td>{summary['errors'][kind]}</td></tr>" for kind in ERROR_KINDS
    )
    note_items = "".join(f"<li>{html.escape(n)}</li>" for n in notes)
    return f"""<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{html.escape(title)}</title>
<style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse;margin:1em 0}}
td,th{{border:1px solid #ccc;padding:4px 8px;text-align:right}}th{{text-align:left}}</style>
</head><body>
<h1>{html.escape(title)}</h1>
<ul>{note_items}</ul>
<table><tr><th></th><th>count</th><th>p50</th><th>p95</th><th>p99</th><th>max</th></tr>
{"".join(rows)}</table>
<p>peak connections {summary["peak_connections"]}, messages sent/s
{summary["emitted_per_second"]}, deliveries/s {summary["delivered_per_second"]}</p>
<table><tr><th>errors</th><th>count</th></tr>{errors}</table>
{"".join(f"<div>{c}</div>" for c in charts)}
</body></html>
"""
