"""Hub fan-out in one process: one publisher, N subscribers, no network.

Contenders:

- ``rtkit``: ``Hub`` on the memory backend; each subscriber is a real ``RealtimeEndpoint``
  (its ``offer`` and ``Outbox``) sending into a no-op ASGI ``send``;
- ``direct``: the encoded event sent straight to each subscriber in a loop (``for s in
  subscribers: await send(event)``), the floor of any fan-out and the tutorial's pattern;
- ``queue``: an unbounded ``asyncio.Queue`` and a writer task per subscriber, the usual
  hand-written alternative to an outbox.

The publisher yields to the event loop after each message, as a server does between frames.
"""

from __future__ import annotations

import asyncio
import functools
import gc
import time
import tracemalloc
from collections.abc import Awaitable, Callable
from typing import Any

import anyio
import anyio.lowlevel
from anyio.abc import TaskGroup

from benchmarks._results import Measurement, Section, add_ratio, merge_samples
from benchmarks.settings import Settings
from rtkit._types import Message as AsgiMessage
from rtkit.codec import encode
from rtkit.endpoint import RealtimeEndpoint
from rtkit.hub import Hub
from rtkit.messages import Message

__all__ = ["run"]

CONTENDERS = ("rtkit", "direct", "queue")
CHANNEL = "room:bench"
_ALLOC_PUBLISHES = 8


async def _noop_send(message: AsgiMessage) -> None:
    """A socket that takes every frame at once."""


async def _stalled_send(message: AsgiMessage) -> None:
    """A socket whose peer stopped reading: the send never completes."""
    await anyio.sleep_forever()


async def _never_receive() -> AsgiMessage:
    await anyio.sleep_forever()
    raise AssertionError("unreachable")


async def _connect() -> AsgiMessage:
    return {"type": "websocket.connect"}


class _Member(RealtimeEndpoint):
    """A real endpoint (its ``offer`` and outbox), built on a scope that needs no socket."""

    inbound = None


def _outbox_bound() -> int:
    """How many frames an endpoint's outbox holds by default."""
    return _Member(_scope(), _never_receive, _noop_send).outbox.max_messages


def _scope() -> dict[str, Any]:
    return {"type": "websocket", "path": "/", "headers": [], "query_string": b"", "subprotocols": []}


def _message(seq: int) -> Message:
    return Message(room="bench", user="alice", text=f"m{seq} hello everyone, a chat line", ts=time.time())


class _Fanout:
    """One contender's set-up: ``publish`` fans a message out; ``backlog`` is what is queued."""

    async def start(self, tg: TaskGroup, n: int, stalled: int | None) -> None:
        raise NotImplementedError

    async def publish(self, seq: int) -> None:
        raise NotImplementedError

    def backlog(self) -> int:
        """Frames queued and not yet sent, over all subscribers."""
        return 0

    def stalled_backlog(self) -> int:
        """Frames held for the stalled subscriber."""
        return 0

    async def stop(self) -> None:
        """Let the writer tasks finish."""


class _RtkitFanout(_Fanout):
    def __init__(self) -> None:
        self.hub = Hub()
        self.members: list[_Member] = []
        self.stalled: _Member | None = None

    async def start(self, tg: TaskGroup, n: int, stalled: int | None) -> None:
        await self.hub.startup()
        for i in range(n):
            send: Callable[[AsgiMessage], Awaitable[None]] = _noop_send
            if i == stalled:
                send = _stalled_send
            # Set up as a served connection is: accepted, subscribed, its outbox attached (the
            # writer task starts when a send has to wait).
            member = _Member(_scope(), _connect, _noop_send, hub=self.hub)
            await member.accept()
            await self.hub.subscribe(CHANNEL, member)
            self.members.append(member)
            if i == stalled:
                self.stalled = member
            member.outbox.attach(send, functools.partial(tg.start_soon, member.outbox.drain, send))

    async def publish(self, seq: int) -> None:
        await self.hub.publish(CHANNEL, _message(seq))

    def backlog(self) -> int:
        return sum(len(m.outbox) for m in self.members if m is not self.stalled)

    def stalled_backlog(self) -> int:
        return len(self.stalled.outbox) if self.stalled is not None else 0

    async def stop(self) -> None:
        for member in self.members:
            member.outbox.close(1000)
        await self.hub.shutdown()


class _DirectFanout(_Fanout):
    def __init__(self) -> None:
        self.sends: list[Callable[[AsgiMessage], Awaitable[None]]] = []

    async def start(self, tg: TaskGroup, n: int, stalled: int | None) -> None:
        self.sends = [_stalled_send if i == stalled else _noop_send for i in range(n)]

    async def publish(self, seq: int) -> None:
        event = {"type": "websocket.send", "text": encode(_message(seq)).decode()}
        for send in self.sends:
            await send(event)


class _QueueFanout(_Fanout):
    def __init__(self) -> None:
        self.queues: list[asyncio.Queue[AsgiMessage | None]] = []
        self.stalled: asyncio.Queue[AsgiMessage | None] | None = None

    async def start(self, tg: TaskGroup, n: int, stalled: int | None) -> None:
        for i in range(n):
            queue: asyncio.Queue[AsgiMessage | None] = asyncio.Queue()
            self.queues.append(queue)
            if i == stalled:
                self.stalled = queue
            tg.start_soon(self._writer, queue, _stalled_send if i == stalled else _noop_send)

    @staticmethod
    async def _writer(
        queue: asyncio.Queue[AsgiMessage | None], send: Callable[[AsgiMessage], Awaitable[None]]
    ) -> None:
        while (event := await queue.get()) is not None:
            await send(event)

    async def publish(self, seq: int) -> None:
        event = {"type": "websocket.send", "text": encode(_message(seq)).decode()}
        for queue in self.queues:
            queue.put_nowait(event)

    def backlog(self) -> int:
        return sum(q.qsize() for q in self.queues if q is not self.stalled)

    def stalled_backlog(self) -> int:
        return self.stalled.qsize() if self.stalled is not None else 0

    async def stop(self) -> None:
        for queue in self.queues:
            queue.put_nowait(None)


_FACTORIES: dict[str, Callable[[], _Fanout]] = {
    "rtkit": _RtkitFanout,
    "direct": _DirectFanout,
    "queue": _QueueFanout,
}


async def _throughput(
    contender: str, n: int, publishes: int, seconds: float, stalled: bool
) -> dict[str, float]:
    """Deliveries per second to the healthy subscribers, bounded by count and time."""
    fanout = _FACTORIES[contender]()
    healthy = n - 1 if stalled else n
    sent = 0
    async with anyio.create_task_group() as tg:
        await fanout.start(tg, n, n // 2 if stalled else None)
        gc.collect()
        start = time.perf_counter()
        # A stalled direct loop never returns from its publish: the time bound ends the run.
        with anyio.move_on_after(seconds):
            for seq in range(publishes):
                await fanout.publish(seq)
                sent += 1
                await anyio.lowlevel.checkpoint()
            # Polling is the point: each checkpoint lets every woken writer run once.
            while fanout.backlog():
                await anyio.lowlevel.checkpoint()
        elapsed = time.perf_counter() - start
        # Deliveries that were made: what left the outboxes (the stalled one excluded).
        delivered = sent * healthy - fanout.backlog()
        stalled_backlog = fanout.stalled_backlog()
        await fanout.stop()
        tg.cancel_scope.cancel()
    return {
        "deliveries_per_s": delivered / elapsed,
        "ns_per_delivery": elapsed * 1e9 / max(delivered, 1),
        "stalled_backlog": float(stalled_backlog),
    }


async def _allocation(contender: str, n: int) -> dict[str, float]:
    """Bytes allocated per delivery while one message is fanned out (tracemalloc's peak)."""
    fanout = _FACTORIES[contender]()
    per_delivery: list[float] = []
    async with anyio.create_task_group() as tg:
        await fanout.start(tg, n, None)
        await fanout.publish(0)  # first publish builds caches; not counted
        await anyio.lowlevel.checkpoint()
        tracemalloc.start()
        try:
            for seq in range(1, _ALLOC_PUBLISHES + 1):
                while fanout.backlog():  # let the writers drain
                    await anyio.lowlevel.checkpoint()
                before, _ = tracemalloc.get_traced_memory()
                tracemalloc.reset_peak()
                await fanout.publish(seq)
                _, peak = tracemalloc.get_traced_memory()
                per_delivery.append((peak - before) / n)
                await anyio.lowlevel.checkpoint()
        finally:
            tracemalloc.stop()
        await fanout.stop()
        tg.cancel_scope.cancel()
    per_delivery.sort()
    return {"alloc_bytes_per_delivery": per_delivery[len(per_delivery) // 2]}


async def _measure_all(settings: Settings) -> list[Measurement]:
    raw: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    for _ in range(settings.hub_repeats):
        for n in settings.hub_sizes:
            healthy_publishes = max(20, settings.hub_deliveries // n)
            # Stalled runs must publish past the outbox's bound, or its policy never acts; the
            # time bound keeps the largest sizes short.
            stalled_publishes = max(healthy_publishes, _outbox_bound() + 100)
            for case, stalled in (("fanout", False), ("fanout-stalled", True)):
                publishes = stalled_publishes if stalled else healthy_publishes
                for contender in CONTENDERS:
                    one = await _throughput(contender, n, publishes, settings.hub_seconds, stalled)
                    raw.setdefault((case, f"{n} subscribers", contender), []).append(one)
    for n in settings.hub_sizes:
        for contender in CONTENDERS:
            raw[("fanout", f"{n} subscribers", contender)][0].update(await _allocation(contender, n))
    out = []
    for (case, param, contender), repeats in raw.items():
        metrics, samples = merge_samples(repeats)
        if case == "fanout-stalled":
            metrics.pop("ns_per_delivery", None)
        else:
            metrics.pop("stalled_backlog", None)
        out.append(Measurement(case=case, param=param, contender=contender, metrics=metrics, samples=samples))
    return out


def run(settings: Settings) -> Section:
    """Measure every contender at every size, healthy and with one stalled subscriber."""
    section = Section(
        name="hub",
        title="Hub fan-out in process (memory backend)",
        description=(
            "One publisher, N subscribers, uvloop; a no-op ASGI send. 'stalled': one subscriber's "
            "send never completes; deliveries/s count the healthy ones."
        ),
        metric_units={
            "deliveries_per_s": "/s",
            "ns_per_delivery": "ns",
            "alloc_bytes_per_delivery": "B",
            "stalled_backlog": "frames",
        },
        lower_is_better=["ns_per_delivery", "alloc_bytes_per_delivery", "stalled_backlog"],
    )
    section.measurements = anyio.run(
        _measure_all, settings, backend="asyncio", backend_options={"use_uvloop": True}
    )
    for n in settings.hub_sizes:
        param = f"{n} subscribers"
        for baseline in ("direct", "queue"):
            add_ratio(section, case="fanout", param=param, metric="deliveries_per_s", baseline=baseline)
            add_ratio(
                section, case="fanout-stalled", param=param, metric="deliveries_per_s", baseline=baseline
            )
        add_ratio(section, case="fanout", param=param, metric="alloc_bytes_per_delivery", baseline="queue")
        add_ratio(
            section,
            case="fanout-stalled",
            param=param,
            metric="deliveries_per_s",
            baseline="rtkit",
            against=("fanout", param),
            target=0.8,
        )
    section.notes.append(
        "A stalled 'direct' loop blocks on the stalled subscriber: it delivers nothing further and the "
        "run ends at its time bound. 'stalled_backlog' is what is held for the stalled subscriber at the "
        "end: rtkit's outbox closes it (policy 'disconnect') and drops its frames; a plain queue grows."
    )
    return section
