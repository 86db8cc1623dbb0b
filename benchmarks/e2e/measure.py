"""What the load client reads off the server: CPU time and memory, over a measurement window."""

from __future__ import annotations

import asyncio
import time
from array import array
from collections.abc import Callable

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs in the venv

__all__ = ["Probe", "Window", "percentile"]


class Probe:
    """CPU seconds and resident memory of the server processes."""

    def __init__(self, pids: list[int]) -> None:
        self.procs = [psutil.Process(pid) for pid in pids]

    def cpu(self) -> float:
        """User plus system seconds, summed over the processes."""
        total = 0.0
        for proc in self.procs:
            times = proc.cpu_times()
            total += times.user + times.system
        return total

    def rss(self) -> int:
        """Resident bytes, summed over the processes."""
        return sum(proc.memory_info().rss for proc in self.procs)

    async def quiesce(self, max_wait: float = 10.0, interval: float = 0.1) -> bool:
        """Wait until the servers use under 5% of a core (set-up frames still being sent)."""
        deadline = time.perf_counter() + max_wait
        last = self.cpu()
        while time.perf_counter() < deadline:
            await asyncio.sleep(interval)
            now = self.cpu()
            if now - last < interval * 0.05:
                return True
            last = now
        return False


def percentile(sorted_values: array[float], q: float) -> float:
    """The ``q`` quantile (0..1) of already sorted values; NaN for none."""
    if not sorted_values:
        return float("nan")
    index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
    return sorted_values[index]


class Window:
    """The measurement window: counts, time and server CPU at its two edges."""

    def __init__(self, probe: Probe, count: Callable[[], int]) -> None:
        self.probe = probe
        self.count = count
        self.open = False
        self.rss_peak = 0

    async def run(self, warmup: float, seconds: float, finished: Callable[[], bool]) -> dict[str, float]:
        """Wait ``warmup``, then measure for ``seconds`` or until ``finished()``."""
        await asyncio.sleep(warmup)
        t0, c0, cpu0 = time.perf_counter(), self.count(), self.probe.cpu()
        self.open = True
        deadline = t0 + seconds
        while time.perf_counter() < deadline and not finished():
            self.rss_peak = max(self.rss_peak, self.probe.rss())
            await asyncio.sleep(min(0.05, max(0.0, deadline - time.perf_counter())))
        t1, c1, cpu1 = time.perf_counter(), self.count(), self.probe.cpu()
        self.open = False
        self.rss_peak = max(self.rss_peak, self.probe.rss())
        elapsed, counted = t1 - t0, c1 - c0
        return {
            "seconds": elapsed,
            "count": float(counted),
            "per_s": counted / elapsed if elapsed > 0 else 0.0,
            "server_cpu_us": (cpu1 - cpu0) * 1e6 / counted if counted else float("nan"),
            "server_cpu_share": (cpu1 - cpu0) / elapsed if elapsed > 0 else 0.0,
        }
