"""The shape of a benchmark's results: what ``results.json`` holds and the report is built from.

Every figure is a *median over repeats* (the raw repeats are kept next to it), and every
comparison is a ``Ratio`` between rtkit and a baseline measured in the same run: absolute
figures say more about the machine than about rtkit, ratios travel. Where both sides have a
value for every repeat, a ratio is the median of the per-repeat ratios: each repeat measures
the two close together in time, so a slow spell of a shared machine falls on both.
"""

from __future__ import annotations

import statistics
from collections.abc import Iterable, Sequence
from typing import Any

import msgspec

__all__ = [
    "Measurement",
    "Ratio",
    "Report",
    "Section",
    "add_ratio",
    "median",
    "merge_samples",
]


class Measurement(msgspec.Struct, kw_only=True):
    """One contender in one case: its metrics as medians over repeats, and the repeats."""

    case: str
    """What was measured, e.g. ``decode`` or ``broadcast``."""
    param: str
    """The case's size or variant, e.g. ``Say`` or ``100 members``."""
    contender: str
    """Who was measured: ``rtkit`` or a baseline's name."""
    metrics: dict[str, float]
    """Median of each metric over the repeats."""
    samples: dict[str, list[float]] = msgspec.field(default_factory=dict)
    """Each metric's value in every repeat, in run order."""
    checks: dict[str, bool] = msgspec.field(default_factory=dict)
    """Pass/fail facts that hold in every repeat, e.g. ``exact_delivery``."""
    notes: list[str] = msgspec.field(default_factory=list)


class Ratio(msgspec.Struct, kw_only=True):
    """rtkit against one baseline on one metric; ``value > 1`` always means rtkit did better.

    For a higher-is-better metric (throughput) it is ``rtkit / baseline``; for a lower-is-better
    one (nanoseconds, bytes) it is ``baseline / rtkit``.
    """

    case: str
    param: str
    metric: str
    contender: str
    baseline: str
    value: float | None
    """None when the baseline measured zero and rtkit did not: unboundedly better."""
    per_repeat: list[float] = msgspec.field(default_factory=list)
    """The ratio in each repeat, when ``value`` is their median (empty otherwise)."""
    target: float | None = None
    """The least acceptable ``value``, when the issue sets one."""
    met: bool | None = None
    floor: float | None = None
    """What the raw ASGI app, the floor of the stack, scored against the same baseline in the
    same run (set for targets against another framework). An app on the same server can hardly
    beat the floor, so a target above this figure asks for more than the stack allows."""


class Section(msgspec.Struct, kw_only=True):
    """The results of one benchmark module."""

    name: str
    title: str
    description: str
    metric_units: dict[str, str] = msgspec.field(default_factory=dict)
    """Unit of each metric; a metric listed in ``lower_is_better`` shrinks when things improve."""
    lower_is_better: list[str] = msgspec.field(default_factory=list)
    measurements: list[Measurement] = msgspec.field(default_factory=list)
    ratios: list[Ratio] = msgspec.field(default_factory=list)
    notes: list[str] = msgspec.field(default_factory=list)
    skipped: str | None = None
    """Why the benchmark did not run, when it did not."""
    seconds: float = 0.0
    """Wall-clock time the benchmark took."""

    def find(self, case: str, param: str, contender: str) -> Measurement | None:
        """The measurement of ``contender`` in ``case``/``param``, if there is one."""
        for m in self.measurements:
            if (m.case, m.param, m.contender) == (case, param, contender):
                return m
        return None


class Report(msgspec.Struct, kw_only=True):
    """Everything one ``python -m benchmarks`` run wrote: ``results.json`` decodes to this."""

    schema: int = 1
    started: str
    finished: str
    flags: dict[str, Any]
    environment: dict[str, Any]
    sections: list[Section]


def median(values: Sequence[float]) -> float:
    """The median, or NaN for no values (a run that produced nothing)."""
    return float(statistics.median(values)) if values else float("nan")


def merge_samples(repeats: Iterable[dict[str, float]]) -> tuple[dict[str, float], dict[str, list[float]]]:
    """Medians and raw series of the metrics of several repeats."""
    samples: dict[str, list[float]] = {}
    for one in repeats:
        for key, value in one.items():
            if value == value:  # NaN (nothing measured) has no JSON form and no median
                samples.setdefault(key, []).append(value)
    return {key: median(vals) for key, vals in samples.items()}, samples


def add_ratio(
    section: Section,
    *,
    case: str,
    param: str,
    metric: str,
    baseline: str,
    contender: str = "rtkit",
    target: float | None = None,
    against: tuple[str, str] | None = None,
) -> Ratio | None:
    """Compare ``contender`` with ``baseline`` on ``metric`` and record it in ``section``.

    ``against`` compares with another case/param of the same baseline name instead (used for
    "stalled vs all-healthy" of rtkit itself). Returns None when either side is missing or zero.
    """
    mine = section.find(case, param, contender)
    base_case, base_param = against if against is not None else (case, param)
    theirs = section.find(base_case, base_param, baseline)
    if mine is None or theirs is None:
        return None
    a, b = mine.metrics.get(metric), theirs.metrics.get(metric)
    if a is None or b is None or a != a or b != b:  # missing, or NaN
        return None
    lower = metric in section.lower_is_better
    num, den = (b, a) if lower else (a, b)
    value: float | None
    per_repeat = _paired(mine.samples.get(metric), theirs.samples.get(metric), lower)
    if per_repeat:
        value = median(per_repeat)
    elif den == 0:
        if num <= 0:
            return None  # both zero: nothing to compare
        value = None
    else:
        value = num / den
    label = baseline if against is None else f"{baseline} ({base_param})"
    ratio = Ratio(
        case=case,
        param=param,
        metric=metric,
        contender=contender,
        baseline=label,
        value=value,
        per_repeat=per_repeat,
        target=target,
        met=None if target is None else (value is None or value >= target),
    )
    section.ratios.append(ratio)
    return ratio


def _paired(mine: list[float] | None, theirs: list[float] | None, lower: bool) -> list[float]:
    """Per-repeat ratios when both series cover the same repeats with nonzero baselines."""
    if not mine or not theirs or len(mine) != len(theirs):
        return []
    pairs = [(b, a) if lower else (a, b) for a, b in zip(mine, theirs, strict=True)]
    if any(den <= 0 for _, den in pairs):
        return []
    return [num / den for num, den in pairs]
