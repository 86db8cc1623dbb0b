"""Where each server's time goes: the end-to-end servers under load, sampled with py-spy.

``make profile`` (``python -m benchmarks.sampling``) serves each contender in turn exactly as
``make bench`` does (uvicorn, one worker, pinned to its core), drives it with the same load
client, and has py-spy sample the server process meanwhile. Every sample is charged to the
source line the server was running, and that line to a layer by the package it belongs to:
rtkit, the contender's own code, uvicorn, the WebSocket protocol library, Starlette, and so on.
A line's share includes the C code it called: ``transport.write`` in uvicorn's ``send`` counts
the socket write to uvicorn, ``msgspec`` decoding in rtkit's receive loop counts to rtkit, and
the event loop's own work (polling, reading sockets, running callbacks) is a layer of its own.

Multiplying a layer's share by the server's CPU time per message (measured by the load client
in the same run) gives microseconds per message per layer, which compare across contenders.
py-spy pauses the server to read each sample, so figures taken under it run a little slower
than ``make bench``'s; compare the layers with each other, not with that report.

Writes, per contender, the samples as collapsed stacks (``<scenario>-<n>-<app>.txt``: open them
in speedscope or inferno for a flame graph), and ``profile.md`` with the tables; prints the
tables too. py-spy must be allowed to read the server's memory (ptrace): as root, or with
``kernel.yama.ptrace_scope`` at 0 or 1 for a process started by the same user.
"""

from __future__ import annotations

import argparse
import shutil
import sys
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import msgspec

from benchmarks.e2e.apps import APPS
from benchmarks.e2e.loadgen import LoadSpec
from benchmarks.e2e.processes import BenchProcessError, ServerProcess, run_client
from benchmarks.environment import CLIENT_CPU, SERVER_CPU, can_pin

__all__ = [
    "LAYERS",
    "Profile",
    "SamplerError",
    "layer_of",
    "main",
    "parse_collapsed",
    "profile_app",
    "render",
]

DEFAULT_OUT = Path(__file__).absolute().parent / "results" / "profile"
DEFAULT_APPS = ("rtkit", "raw-asgi", "starlette", "fastapi-tutorial")

EVENT_LOOP = "event loop (uvloop, in C)"
PROTOCOL = "rtkit's uvicorn protocol"
UNREADABLE = "stack not readable"
# The first component of a frame's file as py-spy shortens it (``uvicorn/server.py``), and the
# layer it belongs to. Order is the tables' order.
_PACKAGES: dict[str, str] = {
    "rtkit": "rtkit",
    "benchmarks": "the contender's own code",
    "starlette": "Starlette",
    "fastapi": "FastAPI",
    "pydantic": "pydantic",
    "anyio": "anyio",
    "uvicorn": "uvicorn",
    "websockets": "WebSocket protocol (websockets, wsproto)",
    "wsproto": "WebSocket protocol (websockets, wsproto)",
    "asyncio": "asyncio (Python part)",
}
_NAMED = tuple(dict.fromkeys(_PACKAGES.values()))
# rtkit's uvicorn protocol is a module of rtkit, charged apart: it replaces part of the stack.
LAYERS: tuple[str, ...] = (
    *_NAMED[: _NAMED.index("uvicorn") + 1],
    PROTOCOL,
    *_NAMED[_NAMED.index("uvicorn") + 1 :],
    EVENT_LOOP,
    "other",
    UNREADABLE,
)
"""Every layer a sample can be charged to, in the order the tables list them."""


# The frame that runs the event loop, in every sample taken while the server serves:
# asyncio.Runner.run, which uvicorn calls to run the loop, or on Python 3.10, which has no
# Runner, uvicorn's own stand-in for asyncio.run.
_LOOP_RUNS = ("Runner.run (asyncio/runners.py:", "asyncio_run (uvicorn/_compat.py:")


class SamplerError(RuntimeError):
    """py-spy is missing or could not sample the server (its message says why)."""


def layer_of(frame: str) -> str:
    """The layer of one collapsed-stack frame, ``"function (package/module.py:line)"``."""
    if not frame:
        return UNREADABLE
    location = frame.rpartition(" (")[2]
    if location.startswith(("asyncio/runners.py", "asyncio/base_events.py", "uvicorn/_compat.py")):
        # The loop's run method is where time spent inside uvloop's C code shows up.
        return EVENT_LOOP
    if location.startswith("rtkit/uvicorn_protocol.py"):
        return PROTOCOL
    return _PACKAGES.get(location.partition("/")[0], "other")


@dataclass
class Profile:
    """The samples of one contender's server under one load."""

    app: str
    samples: int = 0
    skipped: int = 0
    layers: Counter[str] = field(default_factory=Counter)
    lines: Counter[str] = field(default_factory=Counter)
    metrics: dict[str, float] = field(default_factory=dict)

    def share(self, layer: str) -> float:
        """The fraction of samples charged to ``layer``."""
        return self.layers[layer] / self.samples if self.samples else 0.0

    def us_per_message(self, layer: str) -> float | None:
        """Server CPU microseconds per message spent in ``layer``, when the client measured it."""
        cpu = self.cpu_us_per_message
        return None if cpu is None else cpu * self.share(layer)

    @property
    def cpu_us_per_message(self) -> float | None:
        """Server CPU microseconds per echo reply or per broadcast delivery."""
        metrics = self.metrics
        return metrics.get("server_cpu_us_per_msg", metrics.get("server_cpu_us_per_delivery"))


def parse_collapsed(app: str, text: str) -> Profile:
    """Read py-spy's ``raw`` output (collapsed stacks: ``frame;frame;... count`` per line).

    Only samples taken while the event loop ran count: what comes before it (imports, building
    the app) or after it is start-up and shut-down, not serving; ``skipped`` counts them.
    """
    profile = Profile(app)
    for line in text.splitlines():
        stack, _, count_text = line.rstrip().rpartition(" ")
        if not count_text.isdigit():
            continue
        count = int(count_text)
        if stack.strip() and not any(run in stack for run in _LOOP_RUNS):
            profile.skipped += count
            continue
        leaf = stack.rpartition(";")[2].strip()
        profile.samples += count
        profile.layers[layer_of(leaf)] += count
        profile.lines[leaf or UNREADABLE] += count
    return profile


def _py_spy() -> str:
    found = shutil.which("py-spy") or shutil.which("py-spy", path=str(Path(sys.executable).parent))
    if found is None:
        raise SamplerError(
            "py-spy is not installed (it comes with the bench extra: pip install -e '.[bench]')"
        )
    return found


def profile_app(
    app: str, spec: LoadSpec, *, out: Path, rate: int = 200, pin: bool = True
) -> tuple[Profile, Path]:
    """Serve ``app`` under py-spy while the load client runs ``spec``; returns the parsed
    profile and the collapsed-stack file written under ``out``."""
    out.mkdir(parents=True, exist_ok=True)
    stacks = out / f"{spec.scenario}-{spec.connections}-{app}.txt"
    stacks.unlink(missing_ok=True)
    # py-spy starts the server as its own child: a user's process may read its children's
    # memory under Linux's default ptrace policy, not a sibling's.
    sampler = [_py_spy(), "record", "--rate", str(rate), "--format", "raw", "--output", str(stacks), "--"]
    server = ServerProcess(app, cpu=SERVER_CPU if pin else None, wrapper=sampler)
    with server:
        # Only rtkit's ChatEndpoint says when a member is subscribed.
        welcome = spec.scenario == "broadcast" and app.startswith("rtkit")
        ours = {"ports": [server.port], "server_pids": [server.pid], "wait_welcome": welcome}
        result = run_client(msgspec.structs.replace(spec, **ours))
    if not stacks.exists():
        why = server.stderr_tail or f"exit status {server.wrapper_exit}"
        raise SamplerError(f"py-spy wrote no samples of {app!r}: {why}")
    profile = parse_collapsed(app, stacks.read_text())
    profile.metrics = result.metrics
    return profile, stacks


def render(profiles: Sequence[Profile], title: str, *, top: int = 12) -> str:
    """The markdown tables: each layer's share and microseconds per message, then each
    contender's busiest lines."""
    names = [p.app for p in profiles]
    out = [f"## {title}", ""]
    out.append("| layer | " + " | ".join(names) + " |")
    out.append("| --- |" + " ---: |" * len(names))
    for layer in LAYERS:
        if not any(p.layers[layer] for p in profiles):
            continue
        cells = []
        for p in profiles:
            us = p.us_per_message(layer)
            cells.append(f"{p.share(layer):.1%}" + ("" if us is None else f" ({us:.2f} us)"))
        out.append(f"| {layer} | " + " | ".join(cells) + " |")
    cpu = [p.cpu_us_per_message for p in profiles]
    out.append("| **server CPU per message** | " + " | ".join(_us(c) for c in cpu) + " |")
    rate = [p.metrics.get("replies_per_s", p.metrics.get("deliveries_per_s")) for p in profiles]
    out.append("| messages per second, under py-spy | " + " | ".join(_count(r) for r in rate) + " |")
    out.append("| samples while serving | " + " | ".join(str(p.samples) for p in profiles) + " |")
    for p in profiles:
        out += ["", f"### {p.app}: the {top} busiest lines", "", "| share | line |", "| ---: | --- |"]
        for line, count in p.lines.most_common(top):
            out.append(f"| {count / p.samples:.1%} | `{line}` |")
    return "\n".join(out) + "\n"


def _us(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.2f} us"


def _count(value: float | None) -> str:
    return "n/a" if value is None else f"{value:,.0f}"


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks.sampling``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks.sampling", description=__doc__.splitlines()[0]
    )
    parser.add_argument("--scenario", choices=("echo", "broadcast"), default="echo")
    parser.add_argument("--connections", type=int, default=100, help="echo connections or room members")
    parser.add_argument("--apps", nargs="+", choices=sorted(APPS), default=list(DEFAULT_APPS))
    parser.add_argument("--seconds", type=float, default=8.0, help="measurement window per contender")
    parser.add_argument("--warmup", type=float, default=1.0)
    parser.add_argument("--rate", type=int, default=200, help="py-spy samples per second")
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--no-pin", action="store_true", help="do not pin server and client to cores")
    return parser


def main(argv: list[str] | None = None) -> int:
    """Profile each contender in turn; print and write the tables."""
    args = build_parser().parse_args(argv)
    pin = not args.no_pin and can_pin()
    spec = LoadSpec(
        scenario=args.scenario,
        ports=[],
        server_pids=[],
        connections=args.connections,
        seconds=args.seconds,
        warmup=args.warmup,
        max_messages=10**8,
        window=max(2, 1000 // args.connections),
        cpu=CLIENT_CPU if pin else None,
        timeout=args.warmup + args.seconds + 60,
    )
    profiles = []
    try:
        for app in args.apps:
            profile, stacks = profile_app(app, spec, out=args.out, rate=args.rate, pin=pin)
            print(f"{app}: {profile.samples} samples in {stacks}", file=sys.stderr)
            profiles.append(profile)
    except (SamplerError, BenchProcessError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    where = "server pinned to core 0, load client to core 1" if pin else "no core pinning"
    title = f"Where the server's time goes: {args.scenario}, {args.connections} connections ({where})"
    text = render(profiles, title)
    (args.out / "profile.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
