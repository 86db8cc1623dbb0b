"""Server instructions per message, counted by valgrind's callgrind: echo, and room broadcast.

A wall-clock figure on a shared virtual machine moves with every other tenant: the end-to-end
ratios spread from 0.6x to 1.8x between repeats on a noisy host. An instruction count does
not: callgrind runs the server on a simulated CPU and counts what the program executes, the
same for the same code and inputs whatever else the machine does. It counts the server's
user-space work only: the kernel's part of each read, write and wake-up (most of a
1-connection round trip, see the e2e benchmark's loopback row) is not in it, nor is time
spent waiting on memory, so it says what a change to the code costs, not how long a message
takes.

Each contender's server runs under callgrind with one message in flight: the echo on one
connection, then a broadcast to a room (each message published once every member has the
last). Each is a warm-up run, then a short and a long run, with callgrind's counters written
out after each (``callgrind_control --dump``). The long run's count minus the short run's,
divided by the difference of their messages (for the broadcast, of their deliveries), is what
one more message costs: what every run costs once (handshakes, joins, closes) falls out.
Skips, saying why, without valgrind.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from benchmarks._results import Measurement, Section, add_ratio
from benchmarks.e2e.loadgen import LoadSpec
from benchmarks.e2e.processes import BenchProcessError, ServerProcess, run_client
from benchmarks.settings import Settings

__all__ = ["METRIC", "RATIOS", "instructions_of", "run", "unavailable"]

METRIC = "instructions_per_message"
CASE, PARAM = "echo", "1 connection"
BROADCAST = "broadcast"
RATIOS: dict[str, tuple[str, ...]] = {
    "rtkit-fast": ("raw-asgi-fast", "raw-asgi", "fastapi-tutorial"),
    "rtkit": ("raw-asgi", "starlette", "fastapi-tutorial"),
}
"""For each rtkit contender, the baselines it is compared with (where both were measured)."""
_START_TIMEOUT = 180.0  # importing a framework under callgrind takes tens of seconds
_CLIENT_TIMEOUT = 600.0
_SUMMARY = re.compile(rb"^(?:summary|totals):\s*(\d+)", re.MULTILINE)


def unavailable() -> str | None:
    """Why this benchmark cannot run here, or None if it can."""
    missing = [tool for tool in ("valgrind", "callgrind_control") if shutil.which(tool) is None]
    if missing:
        return f"{' and '.join(missing)} not found: install valgrind (Debian: apt install valgrind)"
    return None


def instructions_of(dump: Path) -> int:
    """The instruction count callgrind wrote in ``dump`` (its ``summary`` line)."""
    found = _SUMMARY.search(dump.read_bytes())
    if found is None:
        raise BenchProcessError(f"no instruction count in callgrind's dump {dump}")
    return int(found.group(1))


class _Counted:
    """A contender's server under callgrind, and the counts dumped after each load run."""

    def __init__(self, app: str, directory: Path) -> None:
        self.directory = directory
        wrapper = [
            "valgrind",
            "--tool=callgrind",
            f"--callgrind-out-file={directory / 'cg.%p'}",
            "--dump-instr=no",
            "--",
        ]
        self.server = ServerProcess(app, cpu=None, wrapper=wrapper, start_timeout=_START_TIMEOUT)

    def echo(self, messages: int) -> int:
        """Instructions the server spent on a run of ``messages`` echoes (counted since the last)."""
        return self._count(scenario="echo", connections=1, max_messages=messages)

    def broadcast(self, members: int, publishes: int, room: str) -> int:
        """Instructions spent on ``publishes`` messages to a room of ``members``, one at a time.

        One publish in flight (the load client's window), so each read holds one frame, as
        in the echo: the count does not depend on how fast the server runs.
        """
        return self._count(
            scenario="broadcast",
            connections=members,
            max_messages=publishes,
            window=1,
            room=room,
            wait_welcome=self.server.app.startswith("rtkit"),  # only ChatEndpoint says so
        )

    def _count(self, **fields: Any) -> int:
        server = self.server
        spec = LoadSpec(
            ports=[server.port],
            server_pids=[server.pid],
            seconds=_CLIENT_TIMEOUT,
            warmup=0.0,
            timeout=_CLIENT_TIMEOUT,
            **fields,
        )
        run_client(spec)
        return self._dump()

    def _dump(self) -> int:
        before = set(self.directory.iterdir())
        try:
            done = subprocess.run(
                ["callgrind_control", "--dump", str(self.server.pid)], capture_output=True, timeout=120
            )
        except subprocess.TimeoutExpired as exc:
            raise BenchProcessError("callgrind_control --dump did not answer in 120 s") from exc
        new = sorted(set(self.directory.iterdir()) - before)
        if done.returncode != 0 or len(new) != 1:
            detail = done.stdout.decode(errors="replace") + done.stderr.decode(errors="replace")
            raise BenchProcessError(f"callgrind_control --dump gave {len(new)} new dumps: {detail.strip()}")
        return instructions_of(new[0])


def _measure(app: str, settings: Settings) -> dict[tuple[str, str], float]:
    """Instructions per echoed message, and per delivered broadcast message, of one server."""
    warm, short, long = settings.instruction_messages
    members = settings.instruction_broadcast_members
    out: dict[tuple[str, str], float] = {}
    with tempfile.TemporaryDirectory(prefix="rtkit-bench-callgrind-") as name:
        counted = _Counted(app, Path(name))
        with counted.server:
            counted.echo(warm)  # first-use costs: imports, caches, the code paths' first run
            short_count = counted.echo(short)
            long_count = counted.echo(long)
            out[CASE, PARAM] = (long_count - short_count) / (long - short)
            if members:
                counted.broadcast(members, warm, "warm")
                short_count = counted.broadcast(members, short, "short")
                long_count = counted.broadcast(members, long, "long")
                out[BROADCAST, f"{members} members"] = (long_count - short_count) / ((long - short) * members)
    return out


def run(settings: Settings, *, pin: bool = True) -> Section:
    """Count each contender's instructions per message; ratios of rtkit against the baselines.

    ``pin`` is ignored: counts do not depend on where or how fast the server runs.
    """
    section = Section(
        name="instructions",
        title="Server instructions per message (callgrind)",
        description=(
            "Each server under valgrind's callgrind, one message in flight: echo on one "
            "connection, then a room broadcast (per delivery): (instructions over a long run - "
            "over a short run) / (messages in the long run - in the short run). User space "
            "only; the same for the same code whatever else the machine runs."
        ),
        metric_units={METRIC: "instructions"},
        lower_is_better=[METRIC],
    )
    why = unavailable()
    if why is not None:
        section.skipped = why
        return section
    for app in settings.instruction_contenders:
        try:
            counts = _measure(app, settings)
        except BenchProcessError as exc:
            section.notes.append(f"{app}: {exc}")
            continue
        for (case, param), per_message in counts.items():
            section.measurements.append(
                Measurement(
                    case=case,
                    param=param,
                    contender=app,
                    metrics={METRIC: per_message},
                    samples={METRIC: [per_message]},
                )
            )
    cases = sorted({(m.case, m.param) for m in section.measurements}, key=lambda key: key != (CASE, PARAM))
    for case, param in cases:
        for contender, baselines in RATIOS.items():
            for baseline in baselines:
                add_ratio(
                    section, case=case, param=param, metric=METRIC, baseline=baseline, contender=contender
                )
    return section
