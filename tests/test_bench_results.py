"""How benchmark ratios are computed from the repeats."""

from __future__ import annotations

from benchmarks._results import Measurement, Section, add_ratio


def _section(mine: list[float], theirs: list[float], *, lower: bool = False) -> Section:
    def measured(contender: str, values: list[float]) -> Measurement:
        return Measurement(
            case="echo",
            param="10 connections",
            contender=contender,
            metrics={"rate": sorted(values)[len(values) // 2]},
            samples={"rate": values},
        )

    return Section(
        name="e2e",
        title="t",
        description="d",
        lower_is_better=["rate"] if lower else [],
        measurements=[measured("rtkit", mine), measured("raw", theirs)],
    )


def test_a_ratio_is_the_median_of_the_per_repeat_ratios() -> None:
    # The machine slowed down in the second repeat, for both: paired ratios see through it,
    # a ratio of medians (100 / 150) would not.
    section = _section([100.0, 50.0, 100.0], [100.0, 50.0, 150.0])
    ratio = add_ratio(section, case="echo", param="10 connections", metric="rate", baseline="raw", target=0.9)
    assert ratio is not None
    assert ratio.per_repeat == [1.0, 1.0, 100.0 / 150.0]
    assert ratio.value == 1.0
    assert ratio.met


def test_lower_is_better_ratios_are_inverted_per_repeat() -> None:
    section = _section([2.0, 4.0, 2.0], [4.0, 4.0, 8.0], lower=True)
    ratio = add_ratio(section, case="echo", param="10 connections", metric="rate", baseline="raw")
    assert ratio is not None
    assert ratio.per_repeat == [2.0, 1.0, 4.0]
    assert ratio.value == 2.0


def test_unpaired_series_fall_back_to_the_ratio_of_medians() -> None:
    section = _section([100.0, 80.0, 90.0], [100.0, 100.0])  # a baseline repeat failed
    ratio = add_ratio(section, case="echo", param="10 connections", metric="rate", baseline="raw")
    assert ratio is not None
    assert ratio.per_repeat == []
    assert ratio.value == 90.0 / 100.0
