"""What the numbers were measured on: versions, machine, flags and core pinning."""

from __future__ import annotations

import contextlib
import importlib.metadata
import os
import platform
import resource
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

__all__ = [
    "CLIENT_CPU",
    "SERVER_CPU",
    "describe",
    "pin",
    "pinned_to",
    "pinning_plan",
    "raise_nofile_limit",
]

_PACKAGES = (
    "rtkit",
    "starlette",
    "uvicorn",
    "msgspec",
    "anyio",
    "websockets",
    "uvloop",
    "httptools",
    "fastapi",
    "pydantic",
    "pydantic-core",
    "psutil",
    "redis",
)

# With two or more cores the server gets one and the load client another, so neither steals
# the other's time slices; the orchestrating process stays on the client's core (it only waits).
SERVER_CPU = 0
CLIENT_CPU = 1


def _version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _memory_total() -> int | None:
    try:
        import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs in the venv
    except ImportError:  # pragma: no cover - psutil is in the bench extra
        return None
    return int(psutil.virtual_memory().total)


def can_pin() -> bool:
    """Whether this OS lets a process choose its cores, and there are two to choose from."""
    return hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2


def pin(cpu: int | None) -> list[int] | None:
    """Pin the calling process to ``cpu`` when possible; returns the cores it runs on then."""
    if cpu is None or not hasattr(os, "sched_setaffinity"):
        return None
    available = sorted(os.sched_getaffinity(0))
    if cpu not in available:
        return available
    os.sched_setaffinity(0, {cpu})
    return sorted(os.sched_getaffinity(0))


@contextlib.contextmanager
def pinned_to(cpu: int | None) -> Iterator[None]:
    """Run the calling process on ``cpu`` meanwhile (as ``pin`` does), then where it ran before."""
    if cpu is None or not hasattr(os, "sched_getaffinity"):
        yield
        return
    before = os.sched_getaffinity(0)
    pin(cpu)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def pinning_plan(enabled: bool) -> dict[str, Any]:
    """Which core each process of the end-to-end benchmarks runs on."""
    if not (enabled and can_pin()):
        return {"enabled": False, "reason": "disabled" if not enabled else "sched_setaffinity unavailable"}
    return {"enabled": True, "server_cpu": SERVER_CPU, "client_cpu": CLIENT_CPU}


def _git_state() -> dict[str, Any] | None:
    """The commit measured, and rtkit's files that differ from it (figures of a dirty tree)."""
    root = Path(__file__).absolute().parents[1]

    def git(*args: str) -> str:
        done = subprocess.run(
            ["git", *args], cwd=root, capture_output=True, text=True, timeout=10, check=True
        )
        return done.stdout.strip()

    try:
        return {
            "commit": git("rev-parse", "HEAD"),
            "modified": git("status", "--porcelain", "--", "rtkit").splitlines(),
        }
    except (OSError, subprocess.SubprocessError):
        return None


def describe() -> dict[str, Any]:
    """Versions and machine facts to store next to the figures."""
    return {
        "python": sys.version.split()[0],
        "git": _git_state(),
        "implementation": platform.python_implementation(),
        "packages": {name: _version(name) for name in _PACKAGES},
        "machine": {
            "platform": platform.platform(),
            "cpu_model": _cpu_model(),
            "cpu_count": os.cpu_count(),
            "cpus_available": sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
            "memory_bytes": _memory_total(),
        },
    }


def raise_nofile_limit() -> int:
    """Raise this process's open-file soft limit to its hard limit (thousands of sockets)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or hard > soft:
        target = hard if hard != resource.RLIM_INFINITY else max(soft, 65536)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]
