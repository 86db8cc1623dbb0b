"""Writing a run's results: ``results.json`` (machine-readable), ``results.md`` and ``ratios.svg``."""

from __future__ import annotations

import math
from html import escape
from pathlib import Path
from typing import Any

import msgspec

from benchmarks._results import Measurement, Ratio, Report, Section

__all__ = ["CHARTED_METRICS", "render_markdown", "render_svg", "write"]

CHARTED_METRICS = frozenset(
    {
        "ns_per_msg",
        "deliveries_per_s",
        "replies_per_s",
        "server_kib_per_connection",
        "instructions_per_message",
    }
)
"""The headline metric of each case: the chart shows ratios on these only."""


def write(report: Report, out: Path) -> dict[str, Path]:
    """Write the three files into ``out`` (created if needed); returns their paths."""
    out.mkdir(parents=True, exist_ok=True)
    paths = {"json": out / "results.json", "markdown": out / "results.md", "chart": out / "ratios.svg"}
    paths["json"].write_bytes(msgspec.json.format(msgspec.json.encode(report), indent=2) + b"\n")
    paths["markdown"].write_text(render_markdown(report), encoding="utf-8")
    paths["chart"].write_text(render_svg(report), encoding="utf-8")
    return paths


# -- numbers ----------------------------------------------------------------------------------


def _num(value: float) -> str:
    """A figure with about three significant digits, thousands separated."""
    if math.isinf(value):
        return "∞"
    if value != value:
        return "n/a"
    magnitude = abs(value)
    if magnitude >= 1000:
        return f"{value:,.0f}"
    if magnitude >= 100:
        return f"{value:.0f}"
    if magnitude >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _ratio_text(ratio: Ratio) -> str:
    return "∞ (baseline: 0)" if ratio.value is None else f"{ratio.value:.2f}x"


def _verdict(ratio: Ratio) -> str:
    if ratio.met is None:
        return ""
    return "met" if ratio.met else "**missed**"


# -- markdown ---------------------------------------------------------------------------------


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines


def _case_tables(section: Section) -> list[str]:
    lines: list[str] = []
    cases: dict[str, list[Measurement]] = {}
    for m in section.measurements:
        cases.setdefault(m.case, []).append(m)
    for case, measurements in cases.items():
        metrics: list[str] = []
        for m in measurements:
            metrics += [k for k in m.metrics if k not in metrics]
        checks = sorted({k for m in measurements for k in m.checks})
        header = ["param", "contender"]
        header += [f"{k} ({section.metric_units[k]})" if k in section.metric_units else k for k in metrics]
        header += checks
        rows = []
        for m in measurements:
            row = [m.param, m.contender]
            row += [_num(m.metrics[k]) if k in m.metrics else "" for k in metrics]
            row += [("yes" if m.checks[k] else "**NO**") if k in m.checks else "" for k in checks]
            rows.append(row)
        lines += [f"#### {case}", "", *_table(header, rows), ""]
        notes = [f"- {m.contender} / {m.param}: {note}" for m in measurements for note in m.notes]
        if notes:
            lines += [*notes, ""]
    return lines


def _ratio_table(ratios: list[Ratio]) -> list[str]:
    rows = [
        [
            r.case,
            r.param,
            r.metric,
            f"{r.contender} vs {r.baseline}",
            _ratio_text(r),
            _spread(r),
            "" if r.target is None else f">= {r.target:g}x",
            _verdict(r),
        ]
        for r in ratios
    ]
    headers = ["case", "param", "metric", "comparison", "ratio", "repeats (min-max)", "target", "status"]
    if any(r.floor is not None for r in ratios):
        # Where the floor itself stays under a target, no framework on this server meets it.
        headers.append("raw ASGI's own ratio")
        for row, r in zip(rows, ratios, strict=True):
            row.append("" if r.floor is None else f"{r.floor:.2f}x")
    return _table(headers, rows)


def _spread(ratio: Ratio) -> str:
    if len(ratio.per_repeat) < 2:
        return ""
    return f"{min(ratio.per_repeat):.2f}-{max(ratio.per_repeat):.2f}"


def _git_line(git: Any) -> str:
    if not git:
        return "not recorded"
    modified = git.get("modified") or []
    dirty = f", with {len(modified)} uncommitted change(s) in rtkit/" if modified else ", clean"
    return f"commit {str(git.get('commit'))[:12]}{dirty}"


def render_markdown(report: Report) -> str:
    """The human-readable report: environment, ratios against targets, then every figure."""
    env = report.environment
    machine = env.get("machine", {})
    packages = ", ".join(f"{k} {v}" for k, v in env.get("packages", {}).items() if v)
    lines = [
        "# rtkit benchmark results",
        "",
        f"Run {report.started} to {report.finished} (profile `{report.flags.get('profile')}`).",
        "",
        "Ratios compare rtkit with a baseline measured in the same run; **a ratio above 1 means rtkit "
        "did better** (more per second, or fewer ns / bytes). Figures are medians over repeats.",
        "",
        f"- Python {env.get('python')} ({env.get('implementation')}); {packages}",
        f"- Machine: {machine.get('cpu_model')}, {machine.get('cpu_count')} CPUs, "
        f"{_num((machine.get('memory_bytes') or 0) / 2**30)} GiB; {machine.get('platform')}",
        f"- rtkit tree: {_git_line(env.get('git'))}",
        f"- Flags: `{' '.join(report.flags.get('argv', [])) or '(none)'}`",
        f"- Pinning: {report.flags.get('pinning')}",
        "",
    ]
    targets = [r for s in report.sections for r in s.ratios if r.target is not None]
    if targets:
        lines += ["## Targets", "", *_ratio_table(targets), ""]
    for section in report.sections:
        lines += [f"## {section.title}", "", section.description, ""]
        if section.skipped is not None:
            lines += [f"Skipped: {section.skipped}", ""]
            continue
        lines += [f"Took {section.seconds:.0f} s.", ""]
        if section.ratios:
            lines += ["### Ratios", "", *_ratio_table(section.ratios), ""]
        lines += ["### Figures", "", *_case_tables(section)]
        if section.notes:
            lines += ["### Notes", "", *[f"- {note}" for note in section.notes], ""]
    return "\n".join(lines).rstrip() + "\n"


# -- chart ------------------------------------------------------------------------------------

_ROW = 22
_LABEL_WIDTH = 780  # room for the longest label (a case compared with another of its own)
_PLOT_WIDTH = 420
_LOG_MIN, _LOG_MAX = -3.0, 5.0  # log2 of the axis ends: 1/8x to 32x


def _x(value: float | None) -> float:
    if value is None:
        position = _LOG_MAX
    elif value <= 0:
        position = _LOG_MIN
    else:
        position = min(_LOG_MAX, max(_LOG_MIN, math.log2(value)))
    return _LABEL_WIDTH + (position - _LOG_MIN) / (_LOG_MAX - _LOG_MIN) * _PLOT_WIDTH


def _color(ratio: Ratio) -> str:
    if ratio.met is True:
        return "#2e8b57"
    if ratio.met is False:
        return "#c0392b"
    return "#4a78b5" if ratio.value is None or ratio.value >= 1 else "#9aa5b1"


def render_svg(report: Report) -> str:
    """A bar per headline ratio on a log scale around 1x; targets are drawn as ticks."""
    ratios = [
        (s.name, r)
        for s in report.sections
        for r in s.ratios
        if r.metric in CHARTED_METRICS and r.contender == "rtkit"
    ]
    top = 48
    height = top + _ROW * max(1, len(ratios)) + 40
    width = _LABEL_WIDTH + _PLOT_WIDTH + 90
    one = _x(1.0)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
        f'font-family="sans-serif" font-size="12">',
        '<rect width="100%" height="100%" fill="white"/>',
        '<text x="10" y="20" font-size="15" font-weight="bold">rtkit vs baselines '
        "(ratio &gt; 1: rtkit better; log scale)</text>",
        '<text x="10" y="38" fill="#555">green: target met, red: target missed, '
        "blue/grey: no target; black tick: target; dashed tick: raw ASGI's own ratio</text>",
    ]
    for tick in (0.125, 0.25, 0.5, 1, 2, 4, 8, 16, 32):
        x = _x(tick)
        stroke = "#333" if tick == 1 else "#ddd"
        parts.append(f'<line x1="{x:.1f}" y1="{top - 4}" x2="{x:.1f}" y2="{height - 30}" stroke="{stroke}"/>')
        parts.append(f'<text x="{x:.1f}" y="{height - 16}" text-anchor="middle" fill="#555">{tick:g}x</text>')
    for i, (section, r) in enumerate(ratios):
        y = top + i * _ROW
        label = escape(f"{section} · {r.case} · {r.param} · {r.metric} vs {r.baseline}")
        x = _x(r.value)
        left, right = min(one, x), max(one, x)
        parts.append(f'<text x="{_LABEL_WIDTH - 8}" y="{y + 14}" text-anchor="end">{label}</text>')
        parts.append(
            f'<rect x="{left:.1f}" y="{y + 3}" width="{max(right - left, 1):.1f}" height="{_ROW - 6}" '
            f'fill="{_color(r)}"/>'
        )
        parts.append(
            f'<text x="{_LABEL_WIDTH + _PLOT_WIDTH + 8}" y="{y + 14}">{escape(_ratio_text(r))}</text>'
        )
        if r.target is not None:
            tx = _x(r.target)
            parts.append(
                f'<line x1="{tx:.1f}" y1="{y}" x2="{tx:.1f}" y2="{y + _ROW}" '
                'stroke="black" stroke-width="2"/>'
            )
        if r.floor is not None:
            fx = _x(r.floor)
            parts.append(
                f'<line x1="{fx:.1f}" y1="{y}" x2="{fx:.1f}" y2="{y + _ROW}" '
                'stroke="#555" stroke-width="2" stroke-dasharray="3,2"/>'
            )
    parts.append("</svg>")
    return "\n".join(parts) + "\n"
