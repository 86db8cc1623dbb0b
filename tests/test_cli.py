"""The ``rtkit`` command line."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import urllib.request

import pytest

from rtkit import __version__
from rtkit.cli import build_parser, main


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
    assert (args.host, args.port, args.ws, args.ws_per_message_deflate) == ("127.0.0.1", 8000, "auto", False)


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
        log: list[str] = []

        def watch() -> None:
            assert process.stderr is not None
            for line in process.stderr:
                log.append(line)
                if "Uvicorn running on" in line:
                    started.set()

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        assert started.wait(20), "".join(log)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=10) as response:
            assert response.status == 200
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=10) as response:
            assert b"rtkit" in response.read()
    finally:
        process.terminate()
        process.wait(20)
        if watcher is not None:
            watcher.join(5)
        if process.stderr is not None:
            process.stderr.close()
