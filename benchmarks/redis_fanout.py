"""Redis fan-out: two server processes share a Redis server; room members are split across them.

The sender sits on the first server, so half of the members are reached through Redis. The
baseline is the same rtkit app on one process with the memory backend, same members, same run.
Skips, saying why, when ``rtkit.backends.redis`` is not importable or ``redis-server`` is not
installed; it starts its own throw-away ``redis-server`` on a free loopback port.
"""

from __future__ import annotations

import contextlib
import functools
import importlib
import shutil
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator

from benchmarks._results import Section, add_ratio
from benchmarks.e2e.apps import rtkit_app
from benchmarks.e2e.bench import LOWER_IS_BETTER, METRIC_UNITS, Collector
from benchmarks.e2e.loadgen import LoadSpec
from benchmarks.e2e.processes import BenchProcessError, ServerProcess, run_client
from benchmarks.environment import CLIENT_CPU, SERVER_CPU
from benchmarks.settings import Settings
from rtkit._types import ASGIApp

__all__ = ["redis_app", "run", "unavailable"]

_PREFIX = "rtkit-bench"


def redis_app(url: str, prefix: str) -> ASGIApp:
    """The benchmark's rtkit app on a hub whose backend is ``RedisBackend(url, prefix=prefix)``."""
    from rtkit.backends.redis import RedisBackend  # type: ignore[import-not-found, unused-ignore]
    from rtkit.hub import Hub

    return rtkit_app(Hub(RedisBackend(url, prefix=prefix)))


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None if it can."""
    try:
        importlib.import_module("rtkit.backends.redis")
    except ImportError as exc:
        return (
            f"rtkit.backends.redis is not importable ({exc}); this benchmark needs rtkit's RedisBackend "
            "and the redis extra: pip install 'rtkit[redis]'"
        )
    if shutil.which("redis-server") is None:
        return "redis-server is not installed (the benchmark starts its own on a loopback port)"
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=0.5) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@contextlib.contextmanager
def _redis_server() -> Iterator[str]:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="rtkit-bench-redis-")
    args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"]
    proc = subprocess.Popen(args, cwd=workdir, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 10
        while not _ping(port):
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        proc.terminate()
        proc.wait(5)
        shutil.rmtree(workdir, ignore_errors=True)


def _spec(settings: Settings, servers: list[ServerProcess], pin: bool, room: str) -> LoadSpec:
    n = settings.redis_members
    return LoadSpec(
        scenario="broadcast",
        ports=[s.port for s in servers],
        server_pids=[s.pid for s in servers],
        connections=n,
        seconds=settings.e2e_seconds,
        warmup=settings.e2e_warmup,
        max_messages=settings.e2e_max_messages,
        window=max(2, 1000 // n),
        wait_welcome=True,
        room=room,
        cpu=CLIENT_CPU if pin else None,
    )


def _one_repeat(settings: Settings, url: str, repeat: int, pin: bool, collector: Collector) -> None:
    cpu = SERVER_CPU if pin else None
    param = f"{settings.redis_members} members"
    with ServerProcess("rtkit", cpu=cpu) as single:
        spec = _spec(settings, [single], pin, f"m-r{repeat}")
        collector.record(("broadcast", param, "rtkit-memory"), functools.partial(run_client, spec))
    extra = ["--redis-url", url, "--redis-prefix", f"{_PREFIX}-{repeat}"]
    with (
        ServerProcess("rtkit", cpu=cpu, extra=extra) as a,
        ServerProcess("rtkit", cpu=cpu, extra=extra) as b,
    ):
        spec = _spec(settings, [a, b], pin, f"r-r{repeat}")
        collector.record(("broadcast", param, "rtkit-redis"), functools.partial(run_client, spec))


def run(settings: Settings, *, pin: bool = True) -> Section:
    """Broadcast through Redis across two processes, against one process on the memory backend."""
    section = Section(
        name="redis",
        title="Redis fan-out (two server processes sharing Redis)",
        description=(
            f"{settings.redis_members} members split across two uvicorn processes on one Redis; member 0 "
            "sends. Baseline: one process, memory backend."
        ),
        metric_units=dict(METRIC_UNITS),
        lower_is_better=sorted(LOWER_IS_BETTER),
    )
    why = unavailable()
    if why is not None:
        section.skipped = why
        return section
    collector = Collector()
    param = f"{settings.redis_members} members"
    with _redis_server() as url:
        for repeat in range(settings.e2e_repeats):
            try:
                _one_repeat(settings, url, repeat, pin, collector)
            except BenchProcessError as exc:
                collector.failures.append(f"repeat {repeat}: {exc}")
    section.measurements = collector.measurements()
    section.notes.extend(collector.failures)
    if pin:
        section.notes.append(
            f"Both servers pinned to core {SERVER_CPU}, the client to {CLIENT_CPU}; Redis unpinned."
        )
    add_ratio(
        section,
        case="broadcast",
        param=param,
        metric="deliveries_per_s",
        contender="rtkit-redis",
        baseline="rtkit-memory",
    )
    return section
