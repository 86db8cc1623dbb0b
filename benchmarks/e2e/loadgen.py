"""The load-client process: many WebSocket connections in one uvloop event loop.

Run as ``python -m benchmarks.e2e.loadgen '<LoadSpec as JSON>'``; prints a ``LoadResult`` as
JSON on stdout. Every run is bounded by a message count and by time. Figures are taken over a
measurement window that opens after a warm-up, once the server is idle; the server's CPU time
and memory are read from ``/proc`` (psutil) at the window's edges.

Scenarios:

- ``echo``: each connection keeps one message in flight (send, await the reply, send again);
- ``broadcast``: ``connections`` members join one room; member 0 sends ``say`` frames, at most
  ``window`` of them not yet delivered to every healthy member; ``stalled`` members stop
  reading as soon as they joined; every healthy member must get every message once, in order;
- ``idle``: open ``connections`` sockets and leave them idle; the server's memory per socket.
"""

from __future__ import annotations

import asyncio
import math
import re
import sys
import time
from array import array
from typing import Literal

import msgspec

from benchmarks.e2e.measure import Probe, Window, percentile
from benchmarks.e2e.wsclient import FrameCallback, WsClient, connect
from benchmarks.environment import pin, raise_nofile_limit

__all__ = ["LoadResult", "LoadSpec", "main", "run"]

HOST = "127.0.0.1"
_CONNECT_CONCURRENCY = 100
# A stalled member's receive buffer: small and fixed, so that the server feels the stall after
# tens of kilobytes, as it would with a real slow client, not after the kernel's 32 MiB.
_STALLED_RCVBUF = 16 * 1024
_SEQ = re.compile(rb'"text":"m(\d+)')
_MESSAGE_PREFIX = b'{"type":"message"'
_WELCOME_PREFIX = b'{"type":"welcome"'
_FILLER = b" hello everyone, this is a chat line of a fairly typical length"
_ECHO_PAYLOAD = (
    b'{"type":"say","text":"hello everyone, this is a chat line of a fairly typical length","ref":1}'
)


class LoadSpec(msgspec.Struct, kw_only=True):
    """What the load client does, and against which server processes."""

    scenario: Literal["echo", "broadcast", "idle"]
    ports: list[int]
    """Connection ``i`` goes to ``ports[i % len(ports)]`` (two servers share Redis)."""
    server_pids: list[int]
    connections: int
    seconds: float
    warmup: float
    max_messages: int
    stalled: int = 0
    window: int = 16
    wait_welcome: bool = False
    """Wait for each member's ``welcome`` frame (sent once it is subscribed) before publishing."""
    room: str = "bench"
    text_bytes: int = 0
    """Pad each ``say`` text to this many bytes (0: a ~70-byte chat line)."""
    prefill_bytes: int = 0
    """Publish this many bytes of text before the window opens, so that the kernel's and the
    server's buffers for a stalled member are full while it is measured."""
    cpu: int | None = None
    timeout: float = 60.0


class LoadResult(msgspec.Struct, kw_only=True):
    """What one load run measured; a metric that could not be measured is left out."""

    metrics: dict[str, float]
    checks: dict[str, bool] = msgspec.field(default_factory=dict)
    notes: list[str] = msgspec.field(default_factory=list)

    def __post_init__(self) -> None:
        # NaN has no JSON form: a figure without data (no reply in the window) is dropped.
        self.metrics = {k: v for k, v in self.metrics.items() if math.isfinite(v)}


async def _open_many(
    spec: LoadSpec,
    paths: list[str],
    callbacks: list[FrameCallback | None],
    small_buffers: frozenset[int] = frozenset(),
) -> list[WsClient]:
    gate = asyncio.Semaphore(_CONNECT_CONCURRENCY)

    async def one(i: int) -> WsClient:
        async with gate:
            port = spec.ports[i % len(spec.ports)]
            rcvbuf = _STALLED_RCVBUF if i in small_buffers else None
            return await asyncio.wait_for(connect(HOST, port, paths[i], callbacks[i], rcvbuf=rcvbuf), 30)

    return list(await asyncio.gather(*(one(i) for i in range(len(paths)))))


async def _close_all(conns: list[WsClient]) -> None:
    for conn in conns:
        conn.close()
    if conns:
        await asyncio.wait([conn.closed for conn in conns], timeout=5)


# -- echo -------------------------------------------------------------------------------------


class _Echo:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        self.conns: list[WsClient] = []
        self.sent_at = [0.0] * spec.connections
        self.sent = self.replies = 0
        self.sending = True
        self.window: Window | None = None
        self.rtts: array[float] = array("d")

    def callback(self, i: int) -> FrameCallback:
        def on_frame(payload: bytes) -> None:
            now = time.perf_counter()
            self.replies += 1
            if self.window is not None and self.window.open:
                self.rtts.append(now - self.sent_at[i])
            if self.sending and self.sent < self.spec.max_messages:
                self.sent += 1
                self.sent_at[i] = now
                self.conns[i].send_text(_ECHO_PAYLOAD)

        return on_frame

    async def run(self, probe: Probe) -> LoadResult:
        n = self.spec.connections
        self.conns = await _open_many(self.spec, ["/ws/echo"] * n, [self.callback(i) for i in range(n)])
        await probe.quiesce()
        self.window = Window(probe, lambda: self.replies)
        now = time.perf_counter()
        for i, conn in enumerate(self.conns):
            self.sent += 1
            self.sent_at[i] = now
            conn.send_text(_ECHO_PAYLOAD)
        figures = await self.window.run(
            self.spec.warmup, self.spec.seconds, lambda: self.sent >= self.spec.max_messages
        )
        self.sending = False
        await asyncio.sleep(0.05)
        await _close_all(self.conns)
        rtts = array("d", sorted(self.rtts))
        return LoadResult(
            metrics={
                "replies_per_s": figures["per_s"],
                "rtt_p50_us": percentile(rtts, 0.5) * 1e6,
                "rtt_p99_us": percentile(rtts, 0.99) * 1e6,
                "server_cpu_us_per_msg": figures["server_cpu_us"],
                "server_cpu_share": figures["server_cpu_share"],
                "messages": figures["count"],
            }
        )


# -- broadcast --------------------------------------------------------------------------------


class _Broadcast:
    def __init__(self, spec: LoadSpec) -> None:
        self.spec = spec
        n = spec.connections
        self.stalled = set(range(n - spec.stalled, n))
        self.healthy = n - len(self.stalled)
        self.expected = [1] * n
        self.violations = 0
        self.sent_at: list[float] = [0.0]
        self.counts: list[int] = [0]
        self.seq = 0
        self.outstanding = 0
        self.deliveries = 0
        self.welcomed = 0
        self.all_welcomed: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.sending = False
        self.sender: WsClient | None = None
        self.window: Window | None = None
        self.latencies: array[float] = array("d")
        self.filler = _FILLER.ljust(spec.text_bytes, b".")

    def callback(self, i: int) -> FrameCallback:
        stalled = i in self.stalled

        def on_frame(payload: bytes) -> None:
            if not payload.startswith(_MESSAGE_PREFIX):
                if payload.startswith(_WELCOME_PREFIX):
                    self.welcomed += 1
                    if self.welcomed == self.spec.connections and not self.all_welcomed.done():
                        self.all_welcomed.set_result(None)
                return
            if stalled:
                return  # frames that arrived before it stopped reading
            match = _SEQ.search(payload)
            if match is None:
                self.violations += 1
                return
            seq = int(match.group(1))
            if seq != self.expected[i]:
                self.violations += 1
            self.expected[i] = seq + 1
            if self.window is not None and self.window.open:
                self.latencies.append(time.perf_counter() - self.sent_at[seq])
            self.deliveries += 1
            count = self.counts[seq] = self.counts[seq] + 1
            if count == self.healthy:
                self.outstanding -= 1
                self.pump()

        return on_frame

    def pump(self) -> None:
        sender = self.sender
        while self.sending and self.outstanding < self.spec.window and self.seq < self.spec.max_messages:
            self.seq += 1
            self.outstanding += 1
            self.counts.append(0)
            self.sent_at.append(time.perf_counter())
            if sender is not None:
                sender.send_text(b'{"type":"say","text":"m%d%s"}' % (self.seq, self.filler))

    async def _prefill(self) -> None:
        """Publish ``prefill_bytes`` first; give up early if deliveries stop (a stuck loop)."""
        per_message = len(self.filler) + 40
        deadline = time.perf_counter() + self.spec.timeout / 4
        last, since = self.deliveries, time.perf_counter()
        while self.seq * per_message < self.spec.prefill_bytes and time.perf_counter() < deadline:
            await asyncio.sleep(0.05)
            if self.deliveries != last:
                last, since = self.deliveries, time.perf_counter()
            elif time.perf_counter() - since > 1.0:
                return  # nothing delivered for a second: the server is stuck on the stalled member

    async def run(self, probe: Probe) -> LoadResult:
        n = self.spec.connections
        paths = [f"/ws/chat/{self.spec.room}?name=u{i}" for i in range(n)]
        conns = await _open_many(
            self.spec, paths, [self.callback(i) for i in range(n)], frozenset(self.stalled)
        )
        if self.spec.wait_welcome:
            await asyncio.wait_for(self.all_welcomed, self.spec.timeout)
        else:
            await asyncio.sleep(0.2)  # the baselines register a member as they accept it
        for i in self.stalled:
            conns[i].stop_reading()
        await probe.quiesce()
        rss_before = probe.rss()
        self.sender = conns[0]
        self.window = Window(probe, lambda: self.deliveries)
        self.sending = True
        self.pump()
        await self._prefill()
        figures = await self.window.run(
            self.spec.warmup, self.spec.seconds, lambda: self.seq >= self.spec.max_messages
        )
        self.sending = False
        deadline = time.perf_counter() + 3.0
        # A stalled baseline may never finish: poll against a deadline rather than wait.
        while self.outstanding and time.perf_counter() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.01)
        rss_end = probe.rss()
        healthy = [i for i in range(n) if i not in self.stalled]
        exact = self.violations == 0 and all(self.expected[i] == self.seq + 1 for i in healthy)
        await _close_all(conns)
        latencies = array("d", sorted(self.latencies))
        return LoadResult(
            metrics={
                "deliveries_per_s": figures["per_s"],
                "latency_p50_us": percentile(latencies, 0.5) * 1e6,
                "latency_p99_us": percentile(latencies, 0.99) * 1e6,
                "server_cpu_us_per_delivery": figures["server_cpu_us"],
                "server_cpu_share": figures["server_cpu_share"],
                "published": float(self.seq),
                "undelivered": float(self.outstanding),
                "server_rss_mib": rss_end / 2**20,
                "server_rss_peak_mib": max(self.window.rss_peak, rss_end) / 2**20,
                "server_rss_growth_mib": (max(self.window.rss_peak, rss_end) - rss_before) / 2**20,
            },
            checks={"exact_delivery": exact},
            notes=[]
            if exact
            else [f"{self.violations} out-of-order/duplicate frames, {self.outstanding} undelivered"],
        )


# -- idle -------------------------------------------------------------------------------------


async def _idle(spec: LoadSpec, probe: Probe) -> LoadResult:
    # Open and close a few sockets first, so that the server's code paths are loaded and the
    # memory figure counts connections, not first-use imports and caches.
    warm = await _open_many(spec, ["/ws/echo"] * 20, [None] * 20)
    await _close_all(warm)
    await probe.quiesce()
    rss_before = probe.rss()
    started = time.perf_counter()
    conns = await _open_many(spec, ["/ws/echo"] * spec.connections, [None] * spec.connections)
    connect_seconds = time.perf_counter() - started
    await probe.quiesce()
    await asyncio.sleep(0.2)
    rss_after = probe.rss()
    await _close_all(conns)
    return LoadResult(
        metrics={
            "server_kib_per_connection": (rss_after - rss_before) / 1024 / spec.connections,
            "server_rss_mib": rss_after / 2**20,
            "connections_per_s": spec.connections / connect_seconds,
        }
    )


async def run(spec: LoadSpec) -> LoadResult:
    """Run one scenario against the servers."""
    probe = Probe(spec.server_pids)
    if spec.scenario == "echo":
        coro = _Echo(spec).run(probe)
    elif spec.scenario == "broadcast":
        coro = _Broadcast(spec).run(probe)
    else:
        coro = _idle(spec, probe)
    return await asyncio.wait_for(coro, spec.timeout)


def main(argv: list[str] | None = None) -> int:
    """Entry point of the client process."""
    import uvloop

    args = sys.argv[1:] if argv is None else argv
    spec = msgspec.json.decode(args[0], type=LoadSpec)
    pin(spec.cpu)
    raise_nofile_limit()
    result = uvloop.run(run(spec))
    sys.stdout.write(msgspec.json.encode(result).decode() + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
