"""The end-to-end benchmark: each contender served by uvicorn, driven by the load client.

For every repeat: the machine's own loopback round trip (two bare processes, no server), then
for every contender (the order rotates between repeats so that slow drifts of the machine fall
on everyone): echo at each connection count, room broadcast at each member
count, idle connections, and a broadcast with one member that stops reading.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable

import psutil  # type: ignore[import-untyped, unused-ignore]  # no stubs in the venv

from benchmarks._results import Measurement, Section, add_ratio, merge_samples
from benchmarks.e2e import floor
from benchmarks.e2e.loadgen import LoadResult, LoadSpec
from benchmarks.e2e.processes import BenchProcessError, ServerProcess, run_client
from benchmarks.environment import CLIENT_CPU, SERVER_CPU
from benchmarks.settings import Settings

__all__ = ["LOOPBACK_KEY", "LOWER_IS_BETTER", "METRIC_UNITS", "Collector", "run"]

ECHO_TARGETS = {"raw-asgi": 0.9, "fastapi-tutorial": 1.3}
BROADCAST_TARGETS = {"raw-asgi": 0.85}
STALLED_TARGET = 0.8
# rtkit's outbox holds at most 1 MiB per socket; what the server gains beyond this while one
# member is stalled means something else is growing.
STALLED_RSS_BOUND_MIB = 64.0

LOOPBACK_KEY = ("loopback", "1 connection", "bare sockets")
"""Where the loopback round trip of two bare processes is recorded (no contender of its own)."""

METRIC_UNITS = {
    "replies_per_s": "/s",
    "round_trips_per_s": "/s",
    "deliveries_per_s": "/s",
    "rtt_p50_us": "us",
    "rtt_p99_us": "us",
    "latency_p50_us": "us",
    "latency_p99_us": "us",
    "server_cpu_us_per_msg": "us",
    "server_cpu_us_per_delivery": "us",
    "server_cpu_share": "cores",
    "server_kib_per_connection": "KiB",
    "server_rss_mib": "MiB",
    "server_rss_peak_mib": "MiB",
    "server_rss_growth_mib": "MiB",
    "connections_per_s": "/s",
}
"""Units of the metrics the load client reports."""
LOWER_IS_BETTER = frozenset(
    {
        "rtt_p50_us",
        "rtt_p99_us",
        "latency_p50_us",
        "latency_p99_us",
        "server_cpu_us_per_msg",
        "server_cpu_us_per_delivery",
        "server_kib_per_connection",
        "server_rss_mib",
        "server_rss_peak_mib",
        "server_rss_growth_mib",
        "undelivered",
    }
)

Key = tuple[str, str, str]


class Collector:
    """Results of every load run, grouped by (case, param, contender)."""

    def __init__(self) -> None:
        self.runs: dict[Key, list[LoadResult]] = {}
        self.failures: list[str] = []
        self.incomplete: set[Key] = set()
        """Keys that lost a repeat: their series no longer line up repeat for repeat."""

    def record(self, key: Key, produce: Callable[[], LoadResult]) -> None:
        try:
            self.runs.setdefault(key, []).append(produce())
        except BenchProcessError as exc:
            self.failures.append(f"{' / '.join(key)}: {exc}")
            self.incomplete.add(key)

    def measurements(self) -> list[Measurement]:
        out = []
        for (case, param, contender), results in self.runs.items():
            metrics, samples = merge_samples(r.metrics for r in results)
            checks: dict[str, bool] = {}
            for r in results:
                for name, ok in r.checks.items():
                    checks[name] = checks.get(name, True) and ok
            notes = sorted({note for r in results for note in r.notes})
            if (case, param, contender) in self.incomplete:
                # Paired per-repeat ratios would pair figures of different repeats: keep the
                # medians only, and say why.
                samples = {}
                notes.append("a repeat failed: ratios use medians, not per-repeat pairs")
            out.append(
                Measurement(
                    case=case,
                    param=param,
                    contender=contender,
                    metrics=metrics,
                    samples=samples,
                    checks=checks,
                    notes=notes,
                )
            )
        return out


def _spec(settings: Settings, server: ServerProcess, pin: bool, **fields: object) -> LoadSpec:
    base: dict[str, object] = {
        "ports": [server.port],
        "server_pids": [server.pid],
        "seconds": settings.e2e_seconds,
        "warmup": settings.e2e_warmup,
        "max_messages": settings.e2e_max_messages,
        "cpu": CLIENT_CPU if pin else None,
    }
    base.update(fields)
    return LoadSpec(**base)  # type: ignore[arg-type]  # fields are checked by LoadSpec itself


def _broadcast_spec(
    settings: Settings,
    server: ServerProcess,
    pin: bool,
    members: int,
    *,
    welcome: bool,
    room: str,
    **fields: object,
) -> LoadSpec:
    """A room broadcast of ``members``, with an in-flight window that shrinks as rooms grow."""
    window = max(2, 1000 // members)
    return _spec(
        settings,
        server,
        pin,
        scenario="broadcast",
        connections=members,
        window=window,
        wait_welcome=welcome,
        room=room,
        **fields,
    )


def _large(settings: Settings) -> str:
    return f"{settings.stalled_members} members, {settings.stalled_text_bytes}-byte text"


def _stalled(settings: Settings) -> str:
    return f"{settings.stalled_members} members (1 stalled), {settings.stalled_text_bytes}-byte text"


class _Servers:
    """One server process per contender, started lazily and replaced on demand."""

    def __init__(self, cpu: int | None) -> None:
        self.cpu = cpu
        self._running: dict[str, ServerProcess] = {}

    def get(self, app: str, *, fresh: bool = False) -> ServerProcess:
        server = self._running.get(app)
        if server is not None and fresh:
            server.stop()
            server = None
        if server is None:
            server = self._running[app] = ServerProcess(app, cpu=self.cpu).start()
        return server

    def stop(self) -> None:
        for server in self._running.values():
            server.stop()
        self._running.clear()

    def settle(self, app: str, max_wait: float = 15.0, interval: float = 0.1) -> bool:
        """Wait until ``app``'s server stops using its core; a server that does not is stopped.

        A server can stay busy after its client has gone (a large room's frames still going out
        to closed sockets): the next contender's window, on the same core, would pay for it.
        """
        server = self._running.get(app)
        if server is None:
            return True
        proc = psutil.Process(server.pid)

        def cpu() -> float:
            times = proc.cpu_times()
            return float(times.user + times.system)

        deadline = time.monotonic() + max_wait
        last = cpu()
        while time.monotonic() < deadline:
            time.sleep(interval)
            now = cpu()
            if now - last < interval * 0.05:
                return True
            last = now
        server.stop()
        del self._running[app]
        return False


def _one_repeat(settings: Settings, contenders: list[str], repeat: int, pin: bool, out: Collector) -> None:
    """Every case once, the contenders of each case measured one right after the other.

    The machine's speed drifts (other tenants, thermal state) over seconds to minutes: running
    the contenders of one case back to back, rather than each contender's whole series in turn,
    keeps the pairs that make a ratio within seconds of each other.
    """
    servers = _Servers(SERVER_CPU if pin else None)
    members, text = settings.stalled_members, settings.stalled_text_bytes

    def record(
        key: Key, *, fresh: bool = False, broadcast: int | None = None, room: str = "", **fields: object
    ) -> None:
        app = key[2]
        try:
            server = servers.get(app, fresh=fresh)
        except BenchProcessError as exc:
            out.failures.append(f"{app}: {exc}")
            return
        if broadcast is None:
            spec = _spec(settings, server, pin, **fields)
        else:
            # Only rtkit's ChatEndpoint says when a member is subscribed.
            welcome = app.startswith("rtkit")
            spec = _broadcast_spec(settings, server, pin, broadcast, welcome=welcome, room=room, **fields)
        out.record(key, functools.partial(run_client, spec))
        if not servers.settle(app):
            out.failures.append(f"{app}: still busy 15 s after {' / '.join(key)}; restarted")

    try:
        # The machine's own round trip, measured beside the echoes whose 1-connection figures
        # it bounds (see benchmarks.e2e.floor).
        out.record(
            LOOPBACK_KEY,
            functools.partial(
                floor.measure,
                server_cpu=SERVER_CPU if pin else None,
                client_cpu=CLIENT_CPU if pin else None,
                seconds=settings.e2e_seconds,
                warmup=settings.e2e_warmup,
                max_round_trips=settings.e2e_max_messages,
            ),
        )
        for n in settings.echo_connections:
            for app in [*contenders, *settings.protocol_extras]:
                record(("echo", f"{n} connections", app), scenario="echo", connections=n)
        for n in settings.broadcast_members:
            for app in [*contenders, *settings.protocol_extras, *settings.broadcast_extras]:
                record(("broadcast", f"{n} members", app), broadcast=n, room=f"b{n}-r{repeat}")
        for app in contenders:
            key = ("broadcast-large", _large(settings), app)
            record(key, broadcast=members, room=f"h{members}-r{repeat}", text_bytes=text)
        # Memory figures come from a server that has served nothing else.
        fresh = settings.fresh_servers
        for n in settings.idle_connections:
            for app in contenders:
                key = ("idle", f"{n} connections", app)
                record(key, fresh=fresh, scenario="idle", connections=n, timeout=120.0)
        for app in contenders:
            record(
                ("broadcast-stalled", _stalled(settings), app),
                fresh=fresh,
                broadcast=members,
                room=f"s{members}-r{repeat}",
                stalled=1,
                text_bytes=text,
                prefill_bytes=settings.stalled_prefill_bytes,
            )
    finally:
        servers.stop()


def run(settings: Settings, *, pin: bool = True) -> Section:
    """Run every scenario for every contender, ``e2e_repeats`` times."""
    section = Section(
        name="e2e",
        title="End to end over loopback (uvicorn, uvloop, httptools, websockets-sansio, no deflate)",
        description=(
            "Server and load client in separate processes"
            + (", pinned to separate cores" if pin else "")
            + ". Loopback: two bare processes passing 100 bytes back and forth with blocking "
            "sockets, placed as server and client are: the round trip no 1-connection echo beats. "
            "Echo: one typed message in flight per connection, decoded, checked and sent back. "
            "Broadcast: member 0 sends 'say', every member receives 'message'; latency is "
            "publish-to-delivery. Idle: server RSS per open socket. In each repeat the contenders "
            "of a case run back to back; a ratio is the median of the per-repeat ratios. "
            "Targets: rtkit as 'rtkit serve' runs it, on rtkit's uvicorn protocol where the run "
            "measures it ('rtkit-fast'), against each baseline on uvicorn's; the echo and "
            "broadcast rows of 'rtkit' on uvicorn's own protocol are then reported without one. "
            "The stalled-member case runs rtkit on uvicorn's protocol, with its target."
        ),
        metric_units=dict(METRIC_UNITS),
        lower_is_better=sorted(LOWER_IS_BETTER),
    )
    collector = Collector()
    contenders = list(settings.e2e_contenders)
    for repeat in range(settings.e2e_repeats):
        shift = repeat % len(contenders)
        _one_repeat(settings, contenders[shift:] + contenders[:shift], repeat, pin, collector)
    section.measurements = collector.measurements()
    section.notes.extend(collector.failures)
    _ratios(section, settings)
    return section


def _ratios(section: Section, settings: Settings) -> None:
    baselines = [c for c in settings.e2e_contenders if c != "rtkit"]
    # The targets are on rtkit as ``rtkit serve`` runs it: on its own protocol when that is
    # measured. rtkit on uvicorn's protocol is then reported beside it, without a target.
    stock_targets = "rtkit-fast" not in settings.protocol_extras
    for n in settings.echo_connections:
        for baseline in baselines:
            param = f"{n} connections"
            target = ECHO_TARGETS.get(baseline) if stock_targets else None
            ratio = add_ratio(
                section, case="echo", param=param, metric="replies_per_s", baseline=baseline, target=target
            )
            if ratio is not None and baseline != "raw-asgi":
                # How far the floor itself got against this baseline, recorded beside the
                # target: it bounds what any framework on this server can reach.
                floor = add_ratio(
                    section,
                    case="echo",
                    param=param,
                    metric="replies_per_s",
                    baseline=baseline,
                    contender="raw-asgi",
                )
                ratio.floor = floor.value if floor is not None else None
            add_ratio(section, case="echo", param=param, metric="server_cpu_us_per_msg", baseline=baseline)
            # The typical round trip, beside the rate: with few messages in flight the rate is
            # one over the mean round trip, which the machine's rare long stalls (a virtual CPU
            # descheduled) move as much as the servers do; the median is left to the servers.
            # Informational: the targets stay on replies per second.
            for contender in ("rtkit", *[c for c in settings.protocol_extras if c == "rtkit-fast"]):
                add_ratio(
                    section,
                    case="echo",
                    param=param,
                    metric="rtt_p50_us",
                    baseline=baseline,
                    contender=contender,
                )
        _protocol_ratios(section, settings, "echo", f"{n} connections", "replies_per_s", ECHO_TARGETS)
    for n in settings.broadcast_members:
        for baseline in baselines:
            param = f"{n} members"
            target = BROADCAST_TARGETS.get(baseline) if stock_targets else None
            add_ratio(
                section,
                case="broadcast",
                param=param,
                metric="deliveries_per_s",
                baseline=baseline,
                target=target,
            )
            add_ratio(
                section, case="broadcast", param=param, metric="server_cpu_us_per_delivery", baseline=baseline
            )
        _protocol_ratios(
            section, settings, "broadcast", f"{n} members", "deliveries_per_s", BROADCAST_TARGETS
        )
        for extra in settings.broadcast_extras:
            # rtkit served without a host app, against the floor and against rtkit mounted.
            for baseline in ("raw-asgi", "rtkit"):
                add_ratio(
                    section,
                    case="broadcast",
                    param=f"{n} members",
                    metric="deliveries_per_s",
                    baseline=baseline,
                    contender=extra,
                )
    stalled = _stalled(settings)
    add_ratio(
        section,
        case="broadcast-stalled",
        param=stalled,
        metric="deliveries_per_s",
        baseline="rtkit",
        against=("broadcast-large", _large(settings)),
        target=STALLED_TARGET,
    )
    for baseline in baselines:
        add_ratio(
            section,
            case="broadcast-large",
            param=_large(settings),
            metric="deliveries_per_s",
            baseline=baseline,
        )
    for baseline in baselines:
        add_ratio(
            section, case="broadcast-stalled", param=stalled, metric="deliveries_per_s", baseline=baseline
        )
    mine = section.find("broadcast-stalled", stalled, "rtkit")
    if mine is not None and "server_rss_growth_mib" in mine.metrics:
        mine.checks["memory_bounded"] = mine.metrics["server_rss_growth_mib"] <= STALLED_RSS_BOUND_MIB
    for n in settings.idle_connections:
        for baseline in baselines:
            add_ratio(
                section,
                case="idle",
                param=f"{n} connections",
                metric="server_kib_per_connection",
                baseline=baseline,
            )


def _protocol_ratios(
    section: Section, settings: Settings, case: str, param: str, metric: str, targets: dict[str, float]
) -> None:
    """rtkit on its own uvicorn protocol: against the baselines on uvicorn's, with the targets
    (rtkit as ``rtkit serve`` runs it, against each baseline as its users run it), and against
    the raw ASGI app on the same protocol (what the protocol gives any app, and what is left
    of rtkit's own cost)."""
    if "rtkit-fast" not in settings.protocol_extras:
        return
    for baseline in [c for c in settings.e2e_contenders if c != "rtkit"]:
        ratio = add_ratio(
            section,
            case=case,
            param=param,
            metric=metric,
            baseline=baseline,
            contender="rtkit-fast",
            target=targets.get(baseline),
        )
        if ratio is not None and "raw-asgi-fast" in settings.protocol_extras and baseline != "raw-asgi":
            floor = add_ratio(
                section, case=case, param=param, metric=metric, baseline=baseline, contender="raw-asgi-fast"
            )
            ratio.floor = floor.value if floor is not None else None
    if "raw-asgi-fast" in settings.protocol_extras:
        add_ratio(
            section, case=case, param=param, metric=metric, baseline="raw-asgi-fast", contender="rtkit-fast"
        )
        add_ratio(
            section, case=case, param=param, metric=metric, baseline="raw-asgi", contender="raw-asgi-fast"
        )
