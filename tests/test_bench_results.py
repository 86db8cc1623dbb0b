"""How benchmark ratios are computed from the repeats."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from collections.abc import Callable

import msgspec

from benchmarks._results import Measurement, Report, Section, add_ratio
from benchmarks.e2e.bench import _ratios
from benchmarks.report import render_markdown, render_svg
from benchmarks.settings import PROFILES, Settings


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


def _echo_run(rates: dict[str, list[float]]) -> Section:
    """An e2e section holding only echo at 10 connections, one series of rates per contender."""
    return Section(
        name="e2e",
        title="t",
        description="d",
        measurements=[
            Measurement(
                case="echo",
                param="10 connections",
                contender=contender,
                metrics={"replies_per_s": sorted(values)[len(values) // 2]},
                samples={"replies_per_s": values},
            )
            for contender, values in rates.items()
        ],
    )


def _echo_settings(protocol_extras: tuple[str, ...]) -> Settings:
    """Echo at 10 connections only, rtkit against raw ASGI and the tutorial."""
    return msgspec.structs.replace(
        PROFILES["smoke"],
        e2e_contenders=("rtkit", "raw-asgi", "fastapi-tutorial"),
        protocol_extras=protocol_extras,
        echo_connections=(10,),
        broadcast_members=(),
        idle_connections=(),
    )


def test_the_tutorial_target_carries_the_floors_own_ratio() -> None:
    settings = _echo_settings(protocol_extras=())  # the targets are on rtkit itself
    section = _echo_run(
        {
            "rtkit": [95.0, 90.0, 99.0],
            "raw-asgi": [100.0, 100.0, 100.0],
            "fastapi-tutorial": [80.0, 75.0, 80.0],
        }
    )
    _ratios(section, settings)
    echo = {(r.contender, r.baseline): r for r in section.ratios if r.metric == "replies_per_s"}
    tutorial = echo[("rtkit", "fastapi-tutorial")]
    assert tutorial.target == 1.3
    assert tutorial.floor == 1.25  # raw ASGI / tutorial, per repeat: 1.25, 1.33, 1.25
    assert echo[("raw-asgi", "fastapi-tutorial")].value == 1.25
    assert echo[("rtkit", "raw-asgi")].floor is None  # the floor is not measured against itself

    report = Report(started="s", finished="f", flags={}, environment={}, sections=[section])
    markdown = render_markdown(report)
    targets = markdown.split("## Targets", 1)[1].split("\n## ", 1)[0]
    assert "raw ASGI's own ratio" in targets
    assert "| 1.25x |" in targets
    chart = ET.fromstring(render_svg(report))
    dashed = [line for line in chart.iter("{http://www.w3.org/2000/svg}line") if line.get("stroke-dasharray")]
    assert len(dashed) == 1  # one floor tick, on the tutorial bar; raw ASGI's own ratio has no bar


def test_with_rtkits_protocol_measured_the_targets_are_on_it_alone() -> None:
    settings = _echo_settings(protocol_extras=("rtkit-fast", "raw-asgi-fast"))
    section = _echo_run(
        {
            "rtkit": [85.0, 86.0, 84.0],
            "raw-asgi": [100.0, 100.0, 100.0],
            "fastapi-tutorial": [80.0, 75.0, 80.0],
            "rtkit-fast": [150.0, 160.0, 155.0],
            "raw-asgi-fast": [160.0, 165.0, 170.0],
        }
    )
    _ratios(section, settings)
    echo = {(r.contender, r.baseline): r for r in section.ratios if r.metric == "replies_per_s"}
    assert echo[("rtkit-fast", "raw-asgi")].target == 0.9
    assert echo[("rtkit-fast", "fastapi-tutorial")].target == 1.3
    # rtkit on uvicorn's protocol is still reported, under the figure, but not as a target.
    assert echo[("rtkit", "raw-asgi")].value == 0.85
    assert echo[("rtkit", "raw-asgi")].target is None
    assert echo[("rtkit", "fastapi-tutorial")].target is None
    assert {r.contender for r in section.ratios if r.target is not None} == {"rtkit-fast"}


def test_echo_reports_the_median_round_trip_beside_the_rate_without_a_target() -> None:
    settings = msgspec.structs.replace(
        PROFILES["smoke"],
        e2e_contenders=("rtkit", "fastapi-tutorial"),
        protocol_extras=("rtkit-fast",),
        echo_connections=(1,),
        broadcast_members=(),
        idle_connections=(),
    )

    def measured(contender: str, rtts: list[float]) -> Measurement:
        return Measurement(
            case="echo",
            param="1 connections",
            contender=contender,
            metrics={"rtt_p50_us": sorted(rtts)[1], "replies_per_s": 1e6 / sorted(rtts)[1]},
            samples={"rtt_p50_us": rtts},
        )

    section = Section(
        name="e2e",
        title="t",
        description="d",
        lower_is_better=["rtt_p50_us"],
        measurements=[
            measured("rtkit", [100.0, 110.0, 105.0]),
            measured("rtkit-fast", [80.0, 90.0, 85.0]),
            measured("fastapi-tutorial", [150.0, 132.0, 126.0]),
        ],
    )
    _ratios(section, settings)
    rtt = {(r.contender, r.baseline): r for r in section.ratios if r.metric == "rtt_p50_us"}
    assert set(rtt) == {("rtkit", "fastapi-tutorial"), ("rtkit-fast", "fastapi-tutorial")}
    assert rtt[("rtkit", "fastapi-tutorial")].per_repeat == [1.5, 1.2, 1.2]  # lower is better
    assert rtt[("rtkit-fast", "fastapi-tutorial")].value == 126.0 / 85.0  # median of 150/80, 132/90, 126/85
    assert all(r.target is None for r in rtt.values())


def test_a_lost_repeat_keeps_its_series_out_of_per_repeat_pairs() -> None:
    # rtkit lost repeat 1, the baseline repeat 2: pairing the survivors by position would put
    # figures of different repeats side by side. The ratio falls back to the medians.
    from benchmarks.e2e.bench import Collector
    from benchmarks.e2e.loadgen import LoadResult
    from benchmarks.e2e.processes import BenchProcessError

    def result(value: float) -> Callable[[], LoadResult]:
        return lambda: LoadResult(metrics={"replies_per_s": value})

    def failure() -> LoadResult:
        raise BenchProcessError("the client died")

    collector = Collector()
    for mine, theirs in ((result(90), result(100)), (failure, result(200)), (result(270), failure)):
        collector.record(("echo", "1 connections", "rtkit"), mine)
        collector.record(("echo", "1 connections", "raw-asgi"), theirs)
    section = Section(name="e2e", title="e2e", description="", measurements=collector.measurements())
    rtkit = section.find("echo", "1 connections", "rtkit")
    assert rtkit is not None
    assert rtkit.samples == {}
    assert "a repeat failed: ratios use medians, not per-repeat pairs" in rtkit.notes
    ratio = add_ratio(
        section, case="echo", param="1 connections", metric="replies_per_s", baseline="raw-asgi"
    )
    assert ratio is not None
    assert ratio.per_repeat == []
    assert ratio.value == (90 + 270) / 2 / ((100 + 200) / 2)
    assert len(collector.failures) == 2


def test_a_server_that_stays_busy_is_stopped_before_the_next_contender() -> None:
    import subprocess
    import sys

    from benchmarks.e2e.bench import _Servers

    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])

    class Busy:
        pid = busy.pid
        stopped = False

        def stop(self) -> None:
            Busy.stopped = True
            busy.kill()
            busy.wait()

    servers = _Servers(None)
    servers._running["spinner"] = Busy()  # type: ignore[assignment]
    try:
        assert servers.settle("spinner", max_wait=0.5) is False
        assert Busy.stopped
        assert "spinner" not in servers._running
        assert servers.settle("spinner") is True  # nothing running: nothing to wait for
    finally:
        if busy.poll() is None:
            busy.kill()
            busy.wait()


def test_a_codec_timing_counts_its_fastest_batch() -> None:
    from benchmarks import codec

    # The third batch was hit by a burst of the host's; the second is the one that counts.
    times = iter([900, 400, 2000, *[500] * 7])
    counts: list[int] = []

    def batch(count: int) -> int:
        counts.append(count)
        return next(times)

    assert codec._best_of(batch, 1000) == 400 / 100
    assert counts == [100] * 10
