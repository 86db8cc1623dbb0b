"""A smoke run of every benchmark at tiny sizes: the results have the expected structure.

Timings are never asserted (they belong to the machine); only that each benchmark ran, measured
each contender, and wrote the JSON, markdown and SVG that ``make bench`` promises.
"""

from __future__ import annotations

import os
import shutil
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import msgspec
import pytest
from starlette.testclient import TestClient

from benchmarks import codec, hub_fanout, instructions
from benchmarks.__main__ import BENCHMARKS, main
from benchmarks._results import Report, Section
from benchmarks.e2e.apps import APPS, build
from benchmarks.e2e.bench import LOOPBACK_KEY
from benchmarks.e2e.processes import BenchProcessError
from benchmarks.settings import PROFILES

SMOKE = PROFILES["smoke"]


@pytest.fixture(scope="module")
def out(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("bench")
    assert main(["--profile", "smoke", "--no-pin", "--out", str(directory)]) == 0
    return directory


@pytest.fixture(scope="module")
def report(out: Path) -> Report:
    return msgspec.json.decode((out / "results.json").read_bytes(), type=Report)


def _section(report: Report, name: str) -> Section:
    return next(s for s in report.sections if s.name == name)


def _keys(section: Section) -> set[tuple[str, str, str]]:
    return {(m.case, m.param, m.contender) for m in section.measurements}


def test_every_benchmark_reported(report: Report) -> None:
    assert [s.name for s in report.sections] == list(BENCHMARKS)
    assert report.flags["profile"] == "smoke"
    assert report.environment["packages"]["msgspec"]
    assert report.environment["machine"]["cpu_count"] >= 1


def test_codec(report: Report) -> None:
    section = _section(report, "codec")
    expected = {
        (case, name, contender)
        for case in ("decode", "encode")
        for name in codec.SAMPLES
        for contender in codec.CONTENDERS
    }
    assert _keys(section) == expected
    targets = [r for r in section.ratios if r.target is not None]
    assert {r.param for r in targets} == set(codec.INBOUND)
    assert all(r.baseline == "pydantic" and isinstance(r.met, bool) for r in targets)


def test_hub(report: Report) -> None:
    section = _section(report, "hub")
    for n in SMOKE.hub_sizes:
        for contender in hub_fanout.CONTENDERS:
            healthy = section.find("fanout", f"{n} subscribers", contender)
            stalled = section.find("fanout-stalled", f"{n} subscribers", contender)
            assert healthy is not None
            assert stalled is not None
            assert {"deliveries_per_s", "alloc_bytes_per_delivery"} <= healthy.metrics.keys()
            assert "stalled_backlog" in stalled.metrics
    assert any(r.target == 0.8 for r in section.ratios)


def test_e2e(report: Report) -> None:
    section = _section(report, "e2e")
    assert section.notes == []  # a failed server or client run leaves a note
    loopback = section.find(*LOOPBACK_KEY)
    assert loopback is not None
    assert {"round_trips_per_s", "rtt_p50_us", "rtt_p99_us"} <= loopback.metrics.keys()
    for contender in SMOKE.e2e_contenders:
        echo = section.find("echo", f"{SMOKE.echo_connections[0]} connections", contender)
        assert echo is not None
        assert {"replies_per_s", "rtt_p50_us", "rtt_p99_us"} <= echo.metrics.keys()
        broadcast = section.find("broadcast", f"{SMOKE.broadcast_members[0]} members", contender)
        assert broadcast is not None
        assert broadcast.checks == {"exact_delivery": True}
        idle = section.find("idle", f"{SMOKE.idle_connections[0]} connections", contender)
        assert idle is not None
        assert "server_kib_per_connection" in idle.metrics
        text = SMOKE.stalled_text_bytes
        large = section.find(
            "broadcast-large", f"{SMOKE.stalled_members} members, {text}-byte text", contender
        )
        assert large is not None
        assert large.checks == {"exact_delivery": True}
        param = f"{SMOKE.stalled_members} members (1 stalled), {text}-byte text"
        stalled = section.find("broadcast-stalled", param, contender)
        assert stalled is not None
        assert "server_rss_peak_mib" in stalled.metrics
    for extra in SMOKE.broadcast_extras:  # rtkit served without a host app: broadcasts only
        broadcast = section.find("broadcast", f"{SMOKE.broadcast_members[0]} members", extra)
        assert broadcast is not None
        assert broadcast.checks == {"exact_delivery": True}
        assert section.find("echo", f"{SMOKE.echo_connections[0]} connections", extra) is None
        assert any(r.contender == extra and r.baseline == "raw-asgi" for r in section.ratios)
    echo_param = f"{SMOKE.echo_connections[0]} connections"
    broadcast_param = f"{SMOKE.broadcast_members[0]} members"
    for extra in SMOKE.protocol_extras:  # served on rtkit's uvicorn protocol: echo and broadcasts
        assert section.find("echo", echo_param, extra) is not None
        broadcast = section.find("broadcast", broadcast_param, extra)
        assert broadcast is not None
        assert broadcast.checks == {"exact_delivery": True}
    assert any(r.contender == "rtkit-fast" and r.baseline == "raw-asgi-fast" for r in section.ratios)
    fast_targets = {(r.case, r.baseline) for r in section.ratios if r.contender == "rtkit-fast" and r.target}
    expected = {("echo", "raw-asgi"), ("broadcast", "raw-asgi")}
    if "fastapi-tutorial" in SMOKE.e2e_contenders:
        expected.add(("echo", "fastapi-tutorial"))
    assert expected <= fast_targets
    targets = {(r.case, r.baseline, r.target) for r in section.ratios if r.target is not None}
    assert ("echo", "raw-asgi", 0.9) in targets
    assert ("broadcast", "raw-asgi", 0.85) in targets
    assert any(case == "broadcast-stalled" and target == 0.8 for case, _, target in targets)


def test_instructions(report: Report) -> None:
    section = _section(report, "instructions")
    if section.skipped is not None:
        assert "valgrind" in section.skipped
        if os.environ.get("RTKIT_REQUIRE_PROFILER") == "1":
            pytest.fail(f"RTKIT_REQUIRE_PROFILER=1 but the callgrind benchmark skipped: {section.skipped}")
        return
    assert section.notes == []  # a server that failed under callgrind leaves a note
    echo, broadcast = section.measurements
    assert (echo.case, echo.contender) == ("echo", "raw-asgi-fast")
    members = SMOKE.instruction_broadcast_members
    assert (broadcast.case, broadcast.param) == ("broadcast", f"{members} members")
    # Not timings: counts. One message through uvicorn's loop and Python's interpreter takes
    # thousands of instructions; a count taken from the wrong dump (the start-up's, or none)
    # would be off by orders of magnitude.
    for measured in (echo, broadcast):
        assert 2_000 < measured.metrics[instructions.METRIC] < 2_000_000


def test_instruction_ratios_compare_each_rtkit_server_with_its_baselines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    echo = {
        "rtkit-fast": 40_000.0,
        "raw-asgi-fast": 36_000.0,
        "fastapi-tutorial": 120_000.0,
        "rtkit": 80_000.0,
    }
    room = ("broadcast", "10 members")

    def measure(app: str, settings: object) -> dict[tuple[str, str], float]:
        return {("echo", "1 connection"): echo[app], room: echo[app] / 10}

    monkeypatch.setattr(instructions, "unavailable", lambda: None)
    monkeypatch.setattr(instructions, "_measure", measure)
    settings = msgspec.structs.replace(SMOKE, instruction_contenders=tuple(echo))
    section = instructions.run(settings)
    ratios = {(r.case, r.contender, r.baseline): r.value for r in section.ratios}
    # Fewer instructions is better: baseline / rtkit. Pairs with a baseline not measured are left out.
    expected = {
        ("rtkit-fast", "raw-asgi-fast"): 0.9,
        ("rtkit-fast", "fastapi-tutorial"): 3.0,
        ("rtkit", "fastapi-tutorial"): 1.5,
    }
    assert ratios == {
        (case, *pair): value for case in ("echo", "broadcast") for pair, value in expected.items()
    }
    assert section.ratios[0].case == "echo"  # the echo's ratios come first
    assert section.find(*room, "rtkit") is not None


def test_a_server_that_fails_under_callgrind_leaves_a_note_and_the_others_run(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def measure(app: str, settings: object) -> dict[tuple[str, str], float]:
        if app == "rtkit-fast":
            raise BenchProcessError("callgrind_control --dump did not answer in 120 s")
        return {("echo", "1 connection"): 36_000.0}

    monkeypatch.setattr(instructions, "unavailable", lambda: None)
    monkeypatch.setattr(instructions, "_measure", measure)
    settings = msgspec.structs.replace(SMOKE, instruction_contenders=("rtkit-fast", "raw-asgi-fast"))
    section = instructions.run(settings)
    assert section.notes == ["rtkit-fast: callgrind_control --dump did not answer in 120 s"]
    assert [m.contender for m in section.measurements] == ["raw-asgi-fast"]
    assert section.ratios == []


def test_without_valgrind_the_benchmark_says_why_it_skipped(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(shutil, "which", lambda tool: None)
    section = instructions.run(SMOKE)
    assert section.skipped is not None
    assert "valgrind and callgrind_control not found" in section.skipped
    assert section.measurements == []


def test_the_instruction_count_is_read_from_callgrinds_summary(tmp_path: Path) -> None:
    dump = tmp_path / "cg.1.1"
    dump.write_bytes(b"# callgrind format\nversion: 1\nevents: Ir\nsummary: 123456\nfn=(1) main\n0 5\n")
    assert instructions.instructions_of(dump) == 123_456
    dump.write_bytes(b"events: Ir\n")
    with pytest.raises(BenchProcessError):
        instructions.instructions_of(dump)


def test_redis(report: Report) -> None:
    section = _section(report, "redis")
    if section.skipped is not None:
        assert "redis" in section.skipped
    else:
        assert {m.contender for m in section.measurements} == {"rtkit-memory", "rtkit-redis"}


def test_markdown_and_chart(out: Path, report: Report) -> None:
    markdown = (out / "results.md").read_text(encoding="utf-8")
    assert markdown.startswith("# rtkit benchmark results")
    assert "## Targets" in markdown
    for section in report.sections:
        assert f"## {section.title}" in markdown
    chart = ET.parse(out / "ratios.svg").getroot()
    assert chart.tag == "{http://www.w3.org/2000/svg}svg"
    assert len(chart.findall("{http://www.w3.org/2000/svg}rect")) > 1


def _next_message(ws: Any) -> dict[str, Any]:
    while True:  # rtkit sends welcome/joined frames first
        frame: dict[str, Any] = ws.receive_json()
        if frame["type"] == "message":
            return frame


@pytest.mark.parametrize("name", sorted(APPS))
def test_apps_serve_the_same_protocol(name: str) -> None:
    with TestClient(build(name)) as client:
        with client.websocket_connect("/ws/echo") as ws:
            ws.send_text('{"type":"say","text":"hi","ref":7}')
            assert ws.receive_json() == {"type": "say", "text": "hi", "ref": 7}
            ws.send_text('{"type":"say","text":"no ref"}')
            assert ws.receive_json() == {"type": "say", "text": "no ref"}
        with (
            client.websocket_connect("/ws/chat/r?name=a") as a,
            client.websocket_connect("/ws/chat/r?name=b") as b,
        ):
            if name.startswith("rtkit"):
                assert b.receive_json()["type"] == "welcome"  # b is subscribed before a speaks
            a.send_text('{"type":"say","text":"m1"}')
            for ws in (a, b):
                frame = _next_message(ws)
                assert (frame["room"], frame["user"], frame["text"]) == ("r", "a", "m1")
