"""A plain ``pip install rtkit``, as a new user does it, serves WebSockets end to end.

A fresh virtual environment gets the project with no extras; then the README's first app runs
on that environment's ``uvicorn``, and ``rtkit serve`` runs the demo, both driven by real
clients. Were a WebSocket library missing from the core dependencies, uvicorn would answer
every WebSocket handshake with HTTP 404 and these tests would fail.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import threading
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit

import anyio
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.live import TIMEOUT, recv_json, recv_until, send_json

pytestmark = [pytest.mark.anyio, pytest.mark.install]

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)
WS_URL = re.compile(r"ws://\S+")
RUNNING_ON = re.compile(r"running on https?://[^\s:]+:(\d+)", re.IGNORECASE)

INSTALL_TIMEOUT = 600.0
STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0

OPTIONAL = ("uvloop", "httptools", "redis", "fastapi", "wsproto")
"""Packages of the extras (or WebSocket libraries uvicorn could fall back on): none may be in
a plain install, where they would hide a missing dependency."""


@pytest.fixture
def anyio_backend() -> str:
    """The `websockets` client runs on asyncio only."""
    return "asyncio"


def clean_env() -> dict[str, str]:
    """The environment of a new user's shell: nothing of this test run's interpreter leaks in."""
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV") and not key.startswith("RTKIT_")
    }
    env["PYTHONNOUSERSITE"] = "1"  # the user's site-packages could hide a missing dependency
    env["PYTHONUNBUFFERED"] = "1"
    return env


def run(command: list[str], cwd: Path, timeout: float) -> str:
    """Run ``command`` to its end; its output, or a failure that shows it."""
    done = subprocess.run(
        command,
        cwd=cwd,
        env=clean_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert done.returncode == 0, f"{' '.join(command)} exited {done.returncode}:\n{done.stdout}"
    return done.stdout


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The ``bin`` directory of a new virtual environment holding ``pip install <repo>``."""
    home = tmp_path_factory.mktemp("install")
    target = home / "venv"
    run([sys.executable, "-m", "venv", str(target)], home, INSTALL_TIMEOUT)
    bin_dir = target / "bin"
    # A regular install of the project as it is, no extras: what `pip install rtkit` gives.
    run([str(bin_dir / "python"), "-m", "pip", "install", "--quiet", str(ROOT)], home, INSTALL_TIMEOUT)
    return bin_dir


def first_snippet() -> str:
    """The README's first Python snippet: a complete app defining ``app``."""
    found = SNIPPET.search(README.read_text(encoding="utf-8"))
    assert found is not None, f"no ```python block in {README}"
    return found.group(1)


def chat_path(snippet: str) -> str:
    """The path and query of the chat URL the snippet tells its reader to connect to."""
    urls = [url.rstrip(".,;:)'\"`") for url in WS_URL.findall(snippet)]
    chat = [url for url in urls if "/chat/" in url]
    assert chat, f"the README's first snippet names no ws://.../chat/... URL:\n{snippet}"
    parts = urlsplit(chat[0])
    return f"{parts.path}?{parts.query}" if parts.query else parts.path


class Server:
    """A server process started with ``--port 0``, ready once it has printed the port it bound.

    A thread reads everything the process prints, so that a full pipe never blocks it, and
    echoes it to this test's output, shown when the test fails.
    """

    def __init__(self, command: list[str], cwd: Path) -> None:
        self.command = command
        self.log: list[str] = []
        self.port: int | None = None
        self._ready = threading.Event()
        self.process = subprocess.Popen(
            command, cwd=cwd, env=clean_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
        )
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.log.append(line)
            print(f"[{Path(self.command[0]).name}] {line}", end="")
            found = RUNNING_ON.search(line)
            if found and self.port is None:
                self.port = int(found.group(1))
                self._ready.set()
        self._ready.set()  # the output ended: the process is gone, let the waiter see it

    def wait_ready(self) -> None:
        """Return once the server listens; fail if it exits or takes over ``STARTUP_TIMEOUT``."""
        if not self._ready.wait(STARTUP_TIMEOUT):
            pytest.fail(f"{self.command} did not start in {STARTUP_TIMEOUT} s:\n{''.join(self.log)}")
        if self.port is None:
            pytest.fail(f"{self.command} exited {self.process.wait()}:\n{''.join(self.log)}")

    def stop(self) -> None:
        """Terminate the process, kill it if it lingers, and reap it and its reader."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(STOP_TIMEOUT)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(STOP_TIMEOUT)
        self._reader.join(STOP_TIMEOUT)
        if self.process.stdout is not None:
            self.process.stdout.close()

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@contextmanager
def serving(command: list[str], cwd: Path) -> Iterator[Server]:
    """``command`` running until the block ends, stopped whatever happens in it."""
    server = Server(command, cwd)
    try:
        server.wait_ready()
        yield server
    finally:
        server.stop()


@pytest.fixture
def readme_app(venv: Path, tmp_path: Path) -> Iterator[Server]:
    """The README's first snippet as ``app.py``, on the plain install's ``uvicorn app:app``."""
    (tmp_path / "app.py").write_text(first_snippet(), encoding="utf-8")
    command = [str(venv / "uvicorn"), "app:app", "--host", "127.0.0.1", "--port", "0"]
    with serving(command, tmp_path) as server:
        yield server


@pytest.fixture
def demo(venv: Path, tmp_path: Path) -> Iterator[Server]:
    """``rtkit serve``, the demo app, from the plain install."""
    command = [str(venv / "rtkit"), "serve", "--host", "127.0.0.1", "--port", "0"]
    with serving(command, tmp_path) as server:
        yield server


def get(url: str) -> tuple[int, str, str]:
    """Status, content type and body of a GET."""
    with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
        body = response.read().decode("utf-8")
        return int(response.status), str(response.headers.get("content-type", "")), body


def test_a_plain_install_has_no_optional_package(venv: Path, tmp_path: Path) -> None:
    # Run from an empty directory: the repository's own rtkit/ must not be what imports.
    probe = (
        "import importlib.util, json, rtkit, websockets, uvicorn, jwt\n"
        f"print(json.dumps([n for n in {OPTIONAL!r} if importlib.util.find_spec(n) is not None]))\n"
        "print(rtkit.__file__)\n"
    )
    found, location = run([str(venv / "python"), "-c", probe], tmp_path, 60).splitlines()[-2:]
    assert json.loads(found) == [], f"a plain install should not hold {found}"
    assert Path(location).resolve().is_relative_to(venv.parent.resolve()), location


async def test_the_readme_app_serves_its_chat_on_uvicorn(readme_app: Server) -> None:
    async with connect(readme_app.ws(chat_path(first_snippet())), open_timeout=TIMEOUT) as ws:
        welcome = await recv_json(ws)
        assert welcome["type"] == "welcome", welcome
        await send_json(ws, {"type": "say", "text": "hi"})
        message = (await recv_until(ws, "message"))[-1]
        assert message["text"] == "hi", message


async def test_rtkit_serve_runs_the_whole_demo(demo: Server, venv: Path, tmp_path: Path) -> None:
    status, content_type, page = await anyio.to_thread.run_sync(get, demo.http("/"))
    assert status == 200
    assert content_type.startswith("text/html"), content_type
    assert "<title>rtkit demo</title>" in page

    async with connect(demo.ws("/ws/echo"), open_timeout=TIMEOUT) as ws:
        await ws.send('{"type":"say","text":"hello"}')
        with anyio.fail_after(TIMEOUT):
            assert await ws.recv() == '{"type":"say","text":"hello"}'

    async with connect(demo.ws("/ws/chat/lobby?name=ann"), open_timeout=TIMEOUT) as ws:
        welcome = await recv_json(ws)
        assert (welcome["type"], welcome["user"]) == ("welcome", "ann"), welcome

    # The secured route: refused at the handshake without a token.
    secured = demo.ws("/ws/secure/topics/ann")
    with pytest.raises(InvalidStatus) as refused:
        async with connect(secured, open_timeout=TIMEOUT):
            pass
    assert refused.value.response.status_code == 403

    # With one from `rtkit token`, the path's topic is subscribed at connect (no reply is sent
    # for it): a publish there comes back as the event, and as `published` for its ref.
    with anyio.fail_after(60):
        minted = await anyio.run_process(
            [str(venv / "rtkit"), "token", "--sub", "ann"], cwd=tmp_path, env=clean_env()
        )
    headers = {"Authorization": f"Bearer {minted.stdout.decode().strip()}"}
    async with connect(secured, additional_headers=headers, open_timeout=TIMEOUT) as ws:
        await send_json(ws, {"type": "publish", "topic": "ann", "data": {"n": 1}, "ref": 7})
        frames = await recv_until(ws, "published")
        if not any(frame["type"] == "event" for frame in frames):
            frames += await recv_until(ws, "event")
        assert {"type": "event", "topic": "ann", "data": {"n": 1}} in frames, frames
        assert {"type": "published", "topic": "ann", "ref": 7} in frames, frames
