"""``python -m benchmarks``: run the benchmarks and write ``results.json``, ``results.md`` and a chart.

``make bench`` runs the full set (about twenty minutes); ``make bench ARGS="--quick"`` a smoke run.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import datetime, timezone
from pathlib import Path

from benchmarks._results import Report, Section
from benchmarks.environment import SERVER_CPU, can_pin, describe, pinned_to, pinning_plan
from benchmarks.settings import PROFILES, Settings

__all__ = ["BENCHMARKS", "build_parser", "main", "run"]

Runner = Callable[[Settings, bool], Section]


def _codec(settings: Settings, pin: bool) -> Section:
    from benchmarks import codec

    return codec.run(settings)


def _hub(settings: Settings, pin: bool) -> Section:
    from benchmarks import hub_fanout

    return hub_fanout.run(settings)


def _e2e(settings: Settings, pin: bool) -> Section:
    from benchmarks.e2e import bench

    return bench.run(settings, pin=pin)


def _instructions(settings: Settings, pin: bool) -> Section:
    from benchmarks import instructions

    return instructions.run(settings, pin=pin)


def _redis(settings: Settings, pin: bool) -> Section:
    from benchmarks import redis_fanout

    return redis_fanout.run(settings, pin=pin)


BENCHMARKS: dict[str, Runner] = {
    "codec": _codec,
    "hub": _hub,
    "e2e": _e2e,
    "instructions": _instructions,
    "redis": _redis,
}
"""Every benchmark by name, in the order a full run takes them."""
IN_PROCESS = frozenset({"codec", "hub"})

DEFAULT_OUT = Path(__file__).absolute().parent / "results"


def _pinned(enabled: bool) -> contextlib.AbstractContextManager[None]:
    """Keep an in-process benchmark on one core (no migrations mid-measurement)."""
    return pinned_to(SERVER_CPU if enabled and can_pin() else None)


def build_parser() -> argparse.ArgumentParser:
    """The command line of ``python -m benchmarks``."""
    parser = argparse.ArgumentParser(
        prog="python -m benchmarks",
        description="rtkit's benchmarks, as ratios against baselines measured in the same run.",
    )
    parser.add_argument(
        "--quick", action="store_true", help="a smoke run of seconds (small sizes, one repeat)"
    )
    parser.add_argument(
        "--profile", choices=sorted(PROFILES), default=None, help="sizes to use (overrides --quick)"
    )
    parser.add_argument(
        "--only",
        action="append",
        choices=sorted(BENCHMARKS),
        metavar="NAME",
        help=f"run only this benchmark; repeat for several ({', '.join(BENCHMARKS)})",
    )
    parser.add_argument(
        "--out", type=Path, default=DEFAULT_OUT, help="directory for the results (%(default)s)"
    )
    parser.add_argument("--repeats", type=int, default=None, help="override the number of repeats")
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to cores")
    return parser


def _settings(args: argparse.Namespace) -> Settings:
    settings = PROFILES[args.profile or ("quick" if args.quick else "full")]
    if args.repeats is not None:
        import msgspec

        settings = msgspec.structs.replace(
            settings, codec_repeats=args.repeats, hub_repeats=args.repeats, e2e_repeats=args.repeats
        )
    return settings


def run(names: Sequence[str], settings: Settings, *, pin: bool, argv: Sequence[str] = ()) -> Report:
    """Run the named benchmarks and collect their sections into a report."""
    started = datetime.now(timezone.utc).isoformat(timespec="seconds")
    sections = []
    for name in names:
        print(f"[bench] {name} ...", file=sys.stderr, flush=True)
        t0 = time.perf_counter()
        try:
            with _pinned(pin and name in IN_PROCESS):
                section = BENCHMARKS[name](settings, pin)
        except Exception as exc:  # one broken benchmark must not lose the others' results
            traceback.print_exc()
            section = Section(name=name, title=name, description="", skipped=f"failed: {exc!r}")
        section.seconds = time.perf_counter() - t0
        print(f"[bench] {name} done in {section.seconds:.1f} s", file=sys.stderr, flush=True)
        sections.append(section)
    return Report(
        started=started,
        finished=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        flags={
            "argv": list(argv),
            "profile": settings.profile,
            "settings": {k: v for k, v in __import__("msgspec").structs.asdict(settings).items()},
            "pinning": pinning_plan(pin),
            "in_process_pinned_to": SERVER_CPU if pin and can_pin() else None,
        },
        environment=describe(),
        sections=sections,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point: parse the flags, run, write the results and say where they are."""
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    names = [n for n in BENCHMARKS if args.only is None or n in args.only]
    report = run(names, _settings(args), pin=not args.no_pin, argv=argv)
    from benchmarks.report import write

    paths = write(report, args.out)
    for kind, path in paths.items():
        print(f"{kind}: {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
