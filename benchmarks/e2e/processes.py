"""Starting the server and load-client processes, and getting their answers back."""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from types import TracebackType

import msgspec

from benchmarks.e2e.loadgen import LoadResult, LoadSpec

__all__ = ["PROJECT_ROOT", "BenchProcessError", "ServerProcess", "child_env", "run_client"]

PROJECT_ROOT = Path(__file__).absolute().parents[2]
"""The directory that holds the ``benchmarks`` package: child processes import it from there."""
_START_TIMEOUT = 30.0


class BenchProcessError(RuntimeError):
    """A server or client process failed; the message carries the end of its stderr."""


def child_env() -> dict[str, str]:
    """The environment of a child process: ``benchmarks`` importable, hashing fixed."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PROJECT_ROOT), env.get("PYTHONPATH")]))
    env.setdefault("PYTHONHASHSEED", "0")
    return env


def _tail(path: Path, lines: int = 15) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class ServerProcess:
    """One contender's app on uvicorn in a child process (a context manager).

    Args:
        app: the contender's name (see ``benchmarks.e2e.apps``).
        cpu: the core to pin it to, or None.
        extra: more command-line arguments for ``benchmarks.e2e.server``.
        wrapper: a command that runs the server as its child and ends when it does
            (``py-spy record ... --``); ``pid`` is then the server's, not the wrapper's.
        start_timeout: seconds the server has to start accepting connections.
    """

    def __init__(
        self,
        app: str,
        *,
        cpu: int | None,
        extra: list[str] | None = None,
        wrapper: Sequence[str] = (),
        start_timeout: float = _START_TIMEOUT,
    ) -> None:
        self.app = app
        self.start_timeout = start_timeout
        self.args = [*wrapper, sys.executable, "-m", "benchmarks.e2e.server", "--app", app]
        if cpu is not None:
            self.args += ["--cpu", str(cpu)]
        self.args += extra or []
        self.port = 0
        self.wrapper_exit: int | None = None
        """How the wrapper ended, once stopped (None without a wrapper)."""
        self.stderr_tail = ""
        """The end of what the server (and its wrapper) wrote to stderr, once stopped."""
        self._wrapped = bool(wrapper)
        self._proc: subprocess.Popen[bytes] | None = None
        self._server_pid: int | None = None
        self._log = Path(tempfile.mkstemp(prefix=f"rtkit-bench-{app}-", suffix=".log")[1])

    @property
    def pid(self) -> int:
        """The server process's id."""
        if self._proc is None or self._server_pid is None:
            raise BenchProcessError("the server is not running")
        return self._server_pid

    def _find_server(self, proc: subprocess.Popen[bytes]) -> int:
        if not self._wrapped:
            return proc.pid
        import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs in the venv

        wrapper = psutil.Process(proc.pid)
        # The wrapper's own command line names the server too; it may also exec the server in
        # its own place, so it is the last resort.
        for candidate in (*wrapper.children(recursive=True), wrapper):
            if "benchmarks.e2e.server" in candidate.cmdline():
                return int(candidate.pid)
        raise BenchProcessError(f"no server process under {self.args[0]!r}")

    def start(self) -> ServerProcess:
        """Start the process; returns once it accepts connections."""
        with self._log.open("wb") as log:
            self._proc = subprocess.Popen(
                self.args, stdout=subprocess.PIPE, stderr=log, cwd=PROJECT_ROOT, env=child_env()
            )
        stdout = self._proc.stdout
        if stdout is None:  # pragma: no cover - stdout is a pipe
            raise BenchProcessError("no stdout pipe")
        deadline = time.monotonic() + self.start_timeout
        line = b""
        while time.monotonic() < deadline and self._proc.poll() is None:
            ready, _, _ = select.select([stdout], [], [], 0.1)
            if ready:
                line = stdout.readline()
                if line.startswith(b"PORT "):
                    self.port = int(line.split()[1])
                    try:
                        self._server_pid = self._find_server(self._proc)
                    except BaseException:
                        self.stop()
                        raise
                    return self
        code = self._proc.poll()
        errors = _tail(self._log)  # read before stop() removes the log
        self.stop()
        state = "timed out" if code is None else f"exited with {code}"
        raise BenchProcessError(f"server {self.app!r} did not start ({state}):\n{errors}")

    def stop(self) -> None:
        """Terminate the process (killed if it lingers: a stalled socket can hold a shutdown)."""
        proc, self._proc = self._proc, None
        server, self._server_pid = self._server_pid, None
        if proc is None:
            return
        if self._wrapped and server is not None:
            # End the server; the wrapper ends with it, after writing what it has (py-spy
            # writes its samples then).
            for signum, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 20)):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(server, signum)
                with contextlib.suppress(subprocess.TimeoutExpired):
                    self.wrapper_exit = proc.wait(wait)
                    break
            else:
                proc.kill()
                self.wrapper_exit = proc.wait(5)
        else:
            proc.terminate()
            try:
                proc.wait(5)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)
        if proc.stdout is not None:
            proc.stdout.close()
        self.stderr_tail = _tail(self._log)
        self._log.unlink(missing_ok=True)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()


def run_client(spec: LoadSpec) -> LoadResult:
    """Run the load client with ``spec`` in its own process and return what it measured."""
    args = [sys.executable, "-m", "benchmarks.e2e.loadgen", msgspec.json.encode(spec).decode()]
    try:
        done = subprocess.run(
            args, capture_output=True, cwd=PROJECT_ROOT, env=child_env(), timeout=spec.timeout + 30
        )
    except subprocess.TimeoutExpired as exc:
        raise BenchProcessError(f"the load client ({spec.scenario}) overran its time limit") from exc
    if done.returncode != 0:
        stderr = "\n".join(done.stderr.decode(errors="replace").splitlines()[-8:])
        raise BenchProcessError(f"the load client ({spec.scenario}) failed:\n{stderr}")
    return msgspec.json.decode(done.stdout.strip().splitlines()[-1], type=LoadResult)
