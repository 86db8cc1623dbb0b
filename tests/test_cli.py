"""The ``rtkit`` command line."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
import threading
import urllib.request

import jwt
import msgspec
import pytest
from starlette.testclient import TestClient
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as sync_connect

from rtkit import __version__
from rtkit.cli import _ws_protocol, build_parser, limits_from, log_config, main
from rtkit.demo.app import DemoSettings, create_app


def test_serve_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--help"])
    assert exited.value.code == 0
    text = capsys.readouterr().out
    for option in ("--host", "--port", "--ws", "--ws-per-message-deflate", "--log-level", "--task-limit"):
        assert option in text
    assert "127.0.0.1" in text
    assert "8000" in text


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["--version"])
    assert capsys.readouterr().out.strip() == f"rtkit {__version__}"


def test_defaults_keep_deflate_off() -> None:
    args = build_parser().parse_args(["serve"])
    # None: not asked for, so off (a False default would print "(default: False)" in --help).
    assert (args.host, args.port, args.ws, args.ws_per_message_deflate) == ("127.0.0.1", 8000, None, None)


def test_serve_help_shows_only_defaults_worth_reading(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit):
        main(["serve", "--help"])
    text = " ".join(capsys.readouterr().out.split())  # argparse wraps lines anywhere
    assert "(default: None)" not in text
    assert "(default: False)" not in text
    assert "(default: 127.0.0.1)" in text
    assert "(default: 10000)" in text


def test_serve_runs_on_rtkits_fast_protocol_unless_told_otherwise() -> None:
    assert _ws_protocol(None) == _ws_protocol("rtkit") == "rtkit.uvicorn_protocol:FastWebSocketProtocol"
    assert _ws_protocol("wsproto") == "wsproto"


def test_without_the_websockets_library_serve_falls_back_to_uvicorns_choice(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rtkit.uvicorn_protocol", None)  # its import now fails
    assert _ws_protocol(None) == "auto"
    with pytest.raises(SystemExit) as exited:
        _ws_protocol("rtkit")
    assert exited.value.code == 2
    assert "--ws rtkit:" in capsys.readouterr().err


@pytest.mark.parametrize("flag", ["--rate", "--max-connections", "--max-connections-per-principal"])
def test_zero_turns_a_limit_off_where_the_help_says_so(flag: str) -> None:
    args = build_parser().parse_args(["serve", flag, "0", "--idle-timeout", "0", "--heartbeat", "0"])
    limits = limits_from(args)
    field = {"--rate": "rate", "--max-connections": "max_connections"}.get(
        flag, "max_connections_per_principal"
    )
    assert getattr(limits, field) is None
    assert limits.idle_timeout is None
    assert limits.heartbeat_interval is None


@pytest.mark.parametrize(
    ("flag", "value", "says"),
    [
        ("--max-message-bytes", "0", "must be 1 or more, not 0"),
        ("--outbox-bytes", "0", "must be 1 or more, not 0"),
        ("--max-topics", "0", "must be 1 or more, not 0"),
        ("--burst", "0", "must be 1 or more, not 0"),
        ("--rate", "-1", "must be 0 (off) or more, not -1.0"),
        ("--max-connections", "-5", "must be 0 (off) or more, not -5"),
        ("--idle-timeout", "x", "invalid float value: 'x'"),
        ("--port", "70000", "must be 0 to 65535, not 70000"),
        ("--port", "-1", "must be 0 to 65535, not -1"),
        ("--workers", "0", "must be 1 or more, not 0"),
    ],
)
def test_a_limit_that_cannot_be_off_refuses_0_with_a_usage_error(
    flag: str, value: str, says: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        build_parser().parse_args(["serve", flag, value])
    assert exited.value.code == 2  # argparse's usage error, not a traceback
    assert f"argument {flag}: {says}" in capsys.readouterr().err


def test_limit_flags_reach_the_limits() -> None:
    argv = ["serve", "--max-message-bytes", "2048", "--burst", "3", "--max-topics", "7"]
    argv += ["--outbox-bytes", "9999", "--rate", "2.5", "--max-connections", "40"]
    limits = limits_from(build_parser().parse_args(argv))
    assert (limits.max_message_bytes, limits.burst, limits.max_topics) == (2048, 3, 7)
    assert (limits.outbox_max_bytes, limits.rate, limits.max_connections) == (9999, 2.5, 40)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_rtkit_serve_runs_the_demo() -> None:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "rtkit", "serve", "--port", str(port), "--log-level", "info"],
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
    )
    watcher: threading.Thread | None = None
    try:
        assert process.stderr is not None
        started = threading.Event()
        refusal_logged = threading.Event()
        log: list[str] = []

        def watch() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                log.append(line)
                if "Uvicorn running on" in line:
                    started.set()
                if " WARNING rtkit: " in line:
                    refusal_logged.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert started.wait(20), "".join(log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"rtkit" in response.read()
        # The demo's sockets, on rtkit's uvicorn protocol (the default): an echo round trip.
        with sync_connect(f"ws://127.0.0.1:{port}/ws/echo", open_timeout=10) as ws:
            ws.send('{"type":"say","text":"hello"}')
            assert ws.recv(timeout=10) == '{"type":"say","text":"hello"}'
        # A refusal: the client reads why, and the log says it in one WARNING line.
        with pytest.raises(InvalidStatus) as refused:
            sync_connect(f"ws://127.0.0.1:{port}/ws/chat/lobby?name={'x' * 65}", open_timeout=10)
        assert refused.value.response.body == b"name too long: at most 64 characters"
        refusal_logged.wait(10)
        # Every line has its time and level; rtkit's own INFO lines are shown.
        assert all(LOG_LINE.match(line) for line in log), "".join(log)
        assert any(" INFO rtkit.demo: " in line for line in log), "".join(log)
        warnings = [line for line in log if " WARNING rtkit: " in line]
        assert len(warnings) == 1, "".join(log)
        assert "refused" in warnings[0]
        assert "name too long" in warnings[0]
    finally:
        process.terminate()
        process.wait(20)
        if watcher is not None:
            watcher.join(5)
        if process.stderr is not None:
            process.stderr.close()


LOG_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d{3} (DEBUG|INFO|WARNING|ERROR|CRITICAL) \S+: ")


def test_an_unreachable_redis_at_start_is_one_line_and_a_failed_exit() -> None:
    pytest.importorskip("redis", reason="the redis extra is not installed")
    done = subprocess.run(
        [sys.executable, "-m", "rtkit", "serve", "--port", "0", "--redis-url", "redis://127.0.0.1:1/0"],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode != 0
    lines = done.stderr.splitlines()
    assert all(LOG_LINE.match(line) for line in lines), done.stderr
    errors = [line for line in lines if " ERROR " in line]
    assert "cannot start the demo: cannot reach Redis" in errors[0], done.stderr
    assert "Traceback" not in done.stderr


def test_redis_url_without_the_redis_extra_is_a_usage_error(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "rtkit.backends.redis", None)  # as if redis were not installed
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--redis-url", "redis://127.0.0.1:6379/0"])
    assert exited.value.code == 2
    assert "pip install 'rtkit[redis]'" in capsys.readouterr().err


def test_the_log_puts_a_traceback_under_its_error_line_and_applies_the_level() -> None:
    program = (
        "import logging, logging.config\n"
        "from rtkit.cli import log_config\n"
        "logging.config.dictConfig(log_config('warning'))\n"
        "logging.getLogger('rtkit').info('hidden at warning')\n"
        "logging.getLogger('some.library').warning('a library warns')\n"
        "try:\n"
        "    1 / 0\n"
        "except ZeroDivisionError:\n"
        "    logging.getLogger('rtkit').exception('a handler failed')\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, timeout=60, check=True
    )
    lines = done.stderr.splitlines()
    assert LOG_LINE.match(lines[0])
    assert lines[0].endswith(" WARNING some.library: a library warns")
    assert LOG_LINE.match(lines[1])
    assert lines[1].endswith(" ERROR rtkit: a handler failed")
    assert lines[2] == "Traceback (most recent call last):"
    assert lines[-1] == "ZeroDivisionError: division by zero"
    assert "hidden at warning" not in done.stderr


def test_a_jwt_secret_that_is_not_text_is_a_usage_error(capsys: pytest.CaptureFixture[str]) -> None:
    # What an environment variable of undecodable bytes becomes in Python (surrogate escapes).
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--jwt-secret", "\udcff" * 40])
    assert exited.value.code == 2
    assert "--jwt-secret (or RTKIT_JWT_SECRET)" in capsys.readouterr().err


@pytest.mark.parametrize("secret", ["", "too short"])
@pytest.mark.parametrize("from_env", [False, True], ids=["flag", "env"])
def test_token_refuses_an_empty_or_short_secret_as_serve_does(
    secret: str, from_env: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Never replaced by the public demo secret (an empty one is what a compose file's unset
    # ${RTKIT_JWT_SECRET} gives), and a usage error rather than a traceback.
    monkeypatch.delenv("RTKIT_JWT_SECRET", raising=False)
    if from_env:
        monkeypatch.setenv("RTKIT_JWT_SECRET", secret)
    for argv, flag in ((["token", "--sub", "ann"], "--secret"), (["serve"], "--jwt-secret")):
        with pytest.raises(SystemExit) as exited:
            main(argv if from_env else [*argv, flag, secret])
        assert exited.value.code == 2
        captured = capsys.readouterr()
        assert f"{flag} (or RTKIT_JWT_SECRET): an HS256 secret needs at least 32 bytes" in captured.err
        assert captured.out == ""  # no token printed


def test_token_signs_with_the_secret_serve_takes_from_the_environment() -> None:
    secret = "a-deployment-secret-of-32-bytes-or-more"
    env = {**os.environ, "RTKIT_JWT_SECRET": secret}
    printed = subprocess.run(
        [sys.executable, "-m", "rtkit", "token", "--sub", "ann"],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    token = printed.stdout.strip()
    # The token is one that a server given the same environment accepts.
    with (
        TestClient(create_app(settings=DemoSettings(jwt_secret=secret))) as client,
        client.websocket_connect("/ws/secure/topics/ann", headers={"authorization": f"Bearer {token}"}) as ws,
    ):
        ws.send_json({"type": "publish", "topic": "ann", "data": 1, "ref": 1})
        assert ws.receive_json() == {"type": "event", "topic": "ann", "data": 1}
    # The flag still wins over the environment, as it does for serve.
    other = "x" * 40
    flagged = subprocess.run(
        [sys.executable, "-m", "rtkit", "token", "--sub", "ann", "--secret", other],
        env=env,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    assert jwt.decode(flagged.stdout.strip(), other, algorithms=["HS256"])["sub"] == "ann"


@pytest.mark.parametrize("command", ["serve", "token"])
def test_help_never_prints_the_secret_from_the_environment(
    command: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    secret = "a-deployment-secret-of-32-bytes-or-more"
    monkeypatch.setenv("RTKIT_JWT_SECRET", secret)
    monkeypatch.setenv("RTKIT_REDIS_URL", "redis://:redis-password@db.internal:6379/0")
    with pytest.raises(SystemExit):
        main([command, "--help"])
    text = capsys.readouterr().out
    assert "RTKIT_JWT_SECRET" in text
    # argparse wraps long words across lines: look at the text without its line breaks.
    joined = "".join(text.split())
    assert secret not in joined
    assert "redis-password" not in joined


def test_serve_takes_the_redis_url_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    import uvicorn

    from rtkit.demo.app import SETTINGS_ENV

    ran: list[dict[str, object]] = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **options: ran.append(options))
    monkeypatch.setenv("RTKIT_REDIS_URL", "redis://127.0.0.1:6379/5")
    monkeypatch.setenv(SETTINGS_ENV, "")  # restored (unset) after the test: main() sets it
    assert main(["serve", "--workers", "2"]) == 0  # not refused: the URL came from the environment
    assert ran[0]["workers"] == 2
    assert ran[0]["ws_per_message_deflate"] is False
    assert ran[0]["log_config"] == log_config("info")
    assert msgspec.json.decode(os.environ[SETTINGS_ENV])["redis_url"] == "redis://127.0.0.1:6379/5"
