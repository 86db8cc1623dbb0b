"""The profiler of the end-to-end servers (``make profile``): parsing, layers, and a short live run.

The live run needs py-spy (in the bench extra) and leave to read a child process's memory,
which Linux grants by default. Where it cannot sample, the test is skipped with py-spy's own
words, unless ``RTKIT_REQUIRE_PROFILER=1`` (as in CI) turns that into a failure.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from benchmarks.e2e.loadgen import LoadSpec
from benchmarks.sampling import (
    EVENT_LOOP,
    LAYERS,
    UNREADABLE,
    SamplerError,
    layer_of,
    main,
    parse_collapsed,
    profile_app,
    render,
)

_SERVING = "_run_module_as_main (<frozen runpy>:198);Runner.run (asyncio/runners.py:118)"


@pytest.mark.parametrize(
    ("frame", "layer"),
    [
        ("RealtimeEndpoint._receive_loop (rtkit/endpoint.py:599)", "rtkit"),
        (
            "WebSocketsSansIOProtocol.send (uvicorn/protocols/websockets/websockets_sansio_impl.py:506)",
            "uvicorn",
        ),
        ("Frame.parse (websockets/frames.py:327)", "WebSocket protocol (websockets, wsproto)"),
        ("FastWebSocketProtocol.send (rtkit/uvicorn_protocol.py:216)", "rtkit's uvicorn protocol"),
        ("WSProtocol.handle_events (wsproto/connection.py:10)", "WebSocket protocol (websockets, wsproto)"),
        ("_raw_asgi.<locals>.echo (benchmarks/e2e/apps.py:74)", "the contender's own code"),
        ("BaseModel.model_validate_json (pydantic/main.py:700)", "pydantic"),
        ("Queue.get (asyncio/queues.py:155)", "asyncio (Python part)"),
        ("Runner.run (asyncio/runners.py:118)", EVENT_LOOP),
        ("asyncio_run (uvicorn/_compat.py:60)", EVENT_LOOP),  # Python 3.10: no asyncio.Runner
        ("Enum.__new__ (enum.py:1103)", "other"),
        ("", UNREADABLE),
    ],
)
def test_a_frame_is_charged_to_the_layer_of_its_package(frame: str, layer: str) -> None:
    assert layer in LAYERS
    assert layer_of(frame) == layer


def test_samples_count_by_their_innermost_frame_and_only_while_serving() -> None:
    text = "\n".join(
        [
            f"{_SERVING};Route (starlette/routing.py:1);RealtimeEndpoint.send (rtkit/endpoint.py:9) 6",
            f"{_SERVING};WebSocketsSansIOProtocol.send (uvicorn/protocols/websockets/x.py:506) 3",
            f"{_SERVING} 1",
            "<module> (benchmarks/e2e/server.py:13);_find_and_load (<frozen importlib._bootstrap>:1) 5",
            " 2",
            "",
        ]
    )
    profile = parse_collapsed("rtkit", text)
    assert profile.samples == 12
    assert profile.skipped == 5  # start-up: the loop was not running yet
    assert profile.layers == {"rtkit": 6, "uvicorn": 3, EVENT_LOOP: 1, UNREADABLE: 2}
    assert profile.lines.most_common(1) == [("RealtimeEndpoint.send (rtkit/endpoint.py:9)", 6)]
    profile.metrics = {"server_cpu_us_per_msg": 24.0}
    assert profile.us_per_message("rtkit") == pytest.approx(12.0)
    table = render([profile], "title", top=2)
    assert "| rtkit | 50.0% (12.00 us) |" in table
    assert "| **server CPU per message** | 24.00 us |" in table
    assert "pydantic" not in table  # layers nobody spent time in are left out


def test_on_python_3_10_samples_under_uvicorns_own_loop_runner_count_as_serving() -> None:
    # Python 3.10 has no asyncio.Runner: uvicorn runs the loop from a stand-in of its own.
    serving = "_run_module_as_main (runpy.py:196);asyncio_run (uvicorn/_compat.py:60)"
    text = "\n".join(
        [
            f"{serving};Server._serve (uvicorn/server.py:88) 4",
            f"{serving} 2",
            "_run_module_as_main (runpy.py:196);<module> (benchmarks/e2e/server.py:15) 3",
        ]
    )
    profile = parse_collapsed("raw-asgi", text)
    assert (profile.samples, profile.skipped) == (6, 3)
    assert profile.layers == {"uvicorn": 4, EVENT_LOOP: 2}


def test_a_short_live_run_of_two_servers(tmp_path: Path) -> None:
    spec = LoadSpec(
        scenario="echo", ports=[], server_pids=[], connections=4, seconds=0.8, warmup=0.1, max_messages=10**6
    )
    profiles = []
    for app in ("raw-asgi", "rtkit"):
        try:
            profile, stacks = profile_app(app, spec, out=tmp_path, rate=400, pin=False)
        except SamplerError as exc:  # pragma: no cover - only where py-spy may not sample
            if os.environ.get("RTKIT_REQUIRE_PROFILER") == "1":
                pytest.fail(f"RTKIT_REQUIRE_PROFILER=1 but {exc}")
            pytest.skip(str(exc))
        assert stacks == tmp_path / f"echo-4-{app}.txt"
        assert profile.samples > 0
        assert profile.layers["uvicorn"] > 0  # every contender runs on uvicorn's protocol
        assert profile.cpu_us_per_message is not None  # measured by the load client meanwhile
        profiles.append(profile)
    raw, rtkit = profiles
    assert rtkit.layers["rtkit"] > 0
    assert raw.layers["rtkit"] == 0
    assert "| layer | raw-asgi | rtkit |" in render(profiles, "echo")


def _fake_py_spy(tmp_path: Path, *, says: str, writes: str | None) -> str:
    # Takes py-spy's arguments (record --rate R --format raw --output PATH --), says something,
    # writes PATH or not, and becomes the server.
    fake = tmp_path / "py-spy"
    write = f"printf '%s\\n' '{writes}' > \"$7\"\n" if writes is not None else ""
    fake.write_text(f'#!/bin/sh\necho "{says}" >&2\n{write}shift 8\nexec "$@"\n')
    fake.chmod(0o755)
    return str(fake)


def test_the_command_writes_the_tables(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    fake = _fake_py_spy(tmp_path, says="sampling", writes=f"{_SERVING};Loop (rtkit/endpoint.py:1) 3")
    monkeypatch.setattr("benchmarks.sampling._py_spy", lambda: fake)
    out = tmp_path / "out"
    argv = ["--apps", "raw-asgi", "--connections", "2", "--seconds", "0.2", "--warmup", "0"]
    assert main([*argv, "--no-pin", "--out", str(out)]) == 0
    table = (out / "profile.md").read_text()
    assert "| layer | raw-asgi |" in table
    assert "| rtkit | 100.0% (" in table


def test_a_server_that_cannot_be_sampled_is_reported(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    fake = _fake_py_spy(tmp_path, says="no permission to read memory", writes=None)
    monkeypatch.setattr("benchmarks.sampling._py_spy", lambda: fake)
    spec = LoadSpec(
        scenario="echo", ports=[], server_pids=[], connections=1, seconds=0.1, warmup=0.0, max_messages=50
    )
    with pytest.raises(SamplerError, match="no permission to read memory"):
        profile_app("raw-asgi", spec, out=tmp_path / "out", pin=False)
    argv = ["--apps", "raw-asgi", "--connections", "1", "--seconds", "0.1", "--warmup", "0"]
    assert main([*argv, "--no-pin", "--out", str(tmp_path / "cli")]) == 1
    assert "no permission to read memory" in capsys.readouterr().err
