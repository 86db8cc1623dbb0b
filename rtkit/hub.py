"""The hub: channel subscriptions, encode-once fan-out to local subscribers, and counters.

Data path: ``publish`` encodes a message to JSON once, prefixes the publisher's id (so a
sender can be left out of its own fan-out, even across processes) and hands the bytes to the
backend. The backend delivers them to every subscribed hub, and each hub builds one ``Frame``
and offers it to each local subscriber's outbox. Offering never awaits: a full outbox answers
by its own policy, so one slow socket cannot hold up a channel.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from types import TracebackType
from typing import Any, Protocol

import anyio

from rtkit.backends.base import Backend, BackendHealth
from rtkit.backends.memory import MemoryBackend
from rtkit.channels import topic_channel
from rtkit.codec import encode
from rtkit.errors import NotStartedError
from rtkit.frame import Frame
from rtkit.messages import Event
from rtkit.metrics import Metrics

__all__ = ["Hub", "Subscriber", "new_subscriber_id"]

logger = logging.getLogger("rtkit")
_ID_BYTES = 8
_NO_ORIGIN = bytes(_ID_BYTES)
# A random high half per process keeps subscriber ids of two processes apart; the counter keeps
# them apart within one.
_PROCESS_PREFIX = secrets.randbits(31) << 32
_counter = itertools.count(1)


def new_subscriber_id() -> int:
    """A subscriber id unique across processes (used to leave a sender out of its own fan-out)."""
    return _PROCESS_PREFIX | (next(_counter) & 0xFFFFFFFF)


class Subscriber(Protocol):
    """What the hub delivers to: in practice, a connected endpoint."""

    @property
    def subscriber_id(self) -> int:
        """A unique id from ``new_subscriber_id()``."""

    def offer(self, frame: Frame) -> bool:
        """Queue ``frame`` without waiting; False if the subscriber's outbox refused it."""

    def on_gap(self, channel: str, missed: int) -> None:
        """Messages of ``channel`` were lost in transit; queue a notice without waiting."""


class _Channel:
    __slots__ = ("active", "lock", "members", "offers", "pending")

    def __init__(self) -> None:
        self.members: dict[int, Subscriber] = {}
        # Each member's bound ``offer``, looked up once: fan-out calls it per member per message.
        self.offers: dict[int, Callable[[Frame], bool]] = {}
        self.pending = 0  # subscribe() calls under way: the channel must not be torn down
        self.active = False  # the backend is subscribed
        self.lock = anyio.Lock()


class Hub:
    """Routes messages between channels and the sockets subscribed to them.

    Args:
        backend: moves the bytes between processes; a fresh ``MemoryBackend`` by default.

    Start it before use, with ``await hub.startup()`` / ``await hub.shutdown()`` or
    ``async with hub:``; ``RealtimeRouter`` does this in the application's lifespan.
    """

    def __init__(self, backend: Backend | None = None) -> None:
        self.backend: Backend = backend if backend is not None else MemoryBackend()
        self.metrics = Metrics()
        """Counters of this hub and of the endpoints routed with it."""
        self._channels: dict[str, _Channel] = {}
        self._subscriptions: dict[int, set[str]] = {}
        self._started = False
        self._starts = 0

    # -- lifecycle --------------------------------------------------------------------------

    @property
    def started(self) -> bool:
        """Whether ``startup()`` ran and ``shutdown()`` has not."""
        return self._started

    async def startup(self) -> None:
        """Start the backend; the hub is usable once this returns.

        Starts nest: a hub shared by two routers is started by each and stops when the last
        of them calls ``shutdown()``.
        """
        self._starts += 1
        if self._started:
            return
        try:
            await self.backend.startup(self)
        except BaseException:
            self._starts -= 1
            raise
        self._started = True

    async def shutdown(self) -> None:
        """Stop the backend and forget every subscription (when the last start is undone)."""
        self._starts = max(0, self._starts - 1)
        if not self._started or self._starts:
            return
        self._started = False
        self._channels.clear()
        self._subscriptions.clear()
        await self.backend.shutdown()

    async def __aenter__(self) -> Hub:
        await self.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.shutdown()

    def _check_started(self) -> None:
        if not self._started:
            raise NotStartedError(
                "the Hub is not started: pass `lifespan=router.lifespan` to your Starlette or "
                "FastAPI app (a mounted app gets no lifespan events of its own), use "
                "`async with router:` / `async with hub:`, or call `await hub.startup()`."
            )

    # -- publishing -------------------------------------------------------------------------

    async def publish(self, channel: str, message: Any, *, exclude: Subscriber | None = None) -> None:
        """Send ``message`` to every subscriber of ``channel``, in every process.

        Args:
            channel: the channel's name.
            message: any value msgspec encodes (a Struct, a dict, a list...); encoded once.
            exclude: a local subscriber to leave out (for example the sender).

        Raises:
            NotStartedError: the hub was not started.
            BackendError: the backend could not take the message.
        """
        await self.publish_encoded(channel, encode(message), exclude=exclude)

    async def publish_event(self, topic: str, data: Any, *, namespace: str = "") -> None:
        """Deliver ``{"type": "event", "topic": topic, "data": data}`` to the topic's subscribers.

        This is how application code (an HTTP handler, a background task) reaches the clients of
        ``TopicEndpoint``: one awaited call, the data encoded once. ``namespace`` is that of
        the endpoint class whose clients it is for (see ``TopicEndpoint.namespace``).
        """
        await self.publish(topic_channel(topic, namespace), Event(topic=topic, data=data))

    async def publish_encoded(
        self, channel: str, payload: bytes, *, exclude: Subscriber | None = None
    ) -> None:
        """Like ``publish``, for a message already encoded as JSON bytes."""
        self._check_started()
        origin = exclude.subscriber_id.to_bytes(_ID_BYTES, "big") if exclude is not None else _NO_ORIGIN
        await self.backend.publish(channel, origin + payload)
        self.metrics.published += 1

    def deliver(self, channel: str, data: bytes) -> None:
        """The backend's callback: fan one message out to this process's subscribers."""
        self.metrics.received += 1
        state = self._channels.get(channel)
        if state is None or not state.members:
            return
        offers = state.offers
        # The excluded member is skipped by identity: reading every member's id would touch
        # one more object per member, mostly cold in a large room.
        skip = offers.get(int.from_bytes(data[:_ID_BYTES], "big"))
        frame = Frame(data[_ID_BYTES:])
        delivered = 0
        members = iter(offers.values())
        while True:
            try:
                for offer in members:
                    if offer is not skip and offer(frame):
                        delivered += 1
                break
            except Exception as exc:
                # One member's failure is its own: the loop goes on with the next member (the
                # same iterator), and the publisher is not told of it.
                self.metrics.dropped += 1
                tb = exc.__traceback__
                if isinstance(exc, RuntimeError) and tb is not None and tb.tb_next is None:
                    # Raised by the iteration itself, not by an offer: an offer changed the
                    # channel's members (offers must only queue). The iterator is spent and
                    # would raise again forever; the members not reached miss this message.
                    logger.error(
                        "a subscriber of %r changed the channel's members while taking a message; "
                        "the members not yet reached miss it",
                        channel,
                        exc_info=exc,
                    )
                    break
                logger.exception("a subscriber of %r failed to take a message; it misses it", channel)
        # Refusals are counted by the outboxes themselves, which know why they refused.
        self.metrics.delivered += delivered

    def gap(self, channel: str, missed: int) -> None:
        """The backend's callback: tell this process's subscribers of ``channel`` of a loss."""
        self.metrics.gaps += 1
        state = self._channels.get(channel)
        if state is None:
            return
        # A list: an ``on_gap`` may unsubscribe (close its socket), which changes the members.
        for subscriber in list(state.members.values()):
            try:
                subscriber.on_gap(channel, missed)
            except Exception:
                # As in ``deliver``: one subscriber's failure is its own, and the others are
                # still told of the loss.
                logger.exception("a subscriber of %r failed to take a gap notice", channel)

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Deliver ``channel``'s messages to ``subscriber`` from now on.

        Returns once a message published afterwards, by any process, is certain to arrive.
        Subscribing twice is harmless.
        """
        self._check_started()
        state = self._channels.get(channel)
        if state is None:
            state = self._channels[channel] = _Channel()
        state.pending += 1
        try:
            async with state.lock:
                if not state.active:
                    await self.backend.subscribe(channel)
                    state.active = True
            state.members[subscriber.subscriber_id] = subscriber
            state.offers[subscriber.subscriber_id] = subscriber.offer
            self._subscriptions.setdefault(subscriber.subscriber_id, set()).add(channel)
        finally:
            state.pending -= 1
            # A subscribe that failed or was cancelled before anyone joined leaves no trace.
            abandoned = not state.active and not state.members and not state.pending
            if abandoned and self._channels.get(channel) is state:
                del self._channels[channel]

    async def unsubscribe(self, channel: str, subscriber: Subscriber) -> None:
        """Stop delivering ``channel`` to ``subscriber``; unknown pairs are ignored."""
        self._check_started()
        channels = self._subscriptions.get(subscriber.subscriber_id)
        if channels is not None:
            channels.discard(channel)
            if not channels:
                del self._subscriptions[subscriber.subscriber_id]
        state = self._channels.get(channel)
        if state is None or state.members.pop(subscriber.subscriber_id, None) is None:
            return
        del state.offers[subscriber.subscriber_id]
        if not state.members and not state.pending:
            await self._release(channel, state)

    async def unsubscribe_all(self, subscriber: Subscriber) -> None:
        """Remove ``subscriber`` from every channel (done for each socket as it closes).

        The subscriber leaves every channel before the first await, so it is gone from all of
        them even if this call is cancelled (a cleanup deadline); the channels it leaves empty
        are then released at the backend together, not one confirmation after another. A
        backend that fails to release one is logged as a warning, not raised.
        """
        if not self._started:
            return
        channels = self._subscriptions.pop(subscriber.subscriber_id, None)
        if not channels:
            return
        emptied: list[tuple[str, _Channel]] = []
        for channel in channels:
            state = self._channels.get(channel)
            if state is None or state.members.pop(subscriber.subscriber_id, None) is None:
                continue
            del state.offers[subscriber.subscriber_id]
            if not state.members and not state.pending:
                emptied.append((channel, state))
        if len(emptied) == 1:
            await self._release_quietly(*emptied[0])
        elif emptied:
            async with anyio.create_task_group() as tg:
                for channel, state in emptied:
                    tg.start_soon(self._release_quietly, channel, state)

    async def _release_quietly(self, channel: str, state: _Channel) -> None:
        # The subscriber has left whatever the backend answers: a failure to release a channel
        # there is worth a warning, not an exception out of a socket's cleanup.
        try:
            await self._release(channel, state)
        except Exception as exc:
            logger.warning("could not release channel %r at the backend: %r", channel, exc)

    async def _release(self, channel: str, state: _Channel) -> None:
        async with state.lock:
            if state.members or state.pending:
                return  # somebody subscribed while we waited for the lock
            try:
                if state.active:
                    state.active = False
                    await self.backend.unsubscribe(channel)
            finally:
                # Also when the backend's unsubscribe failed or was cancelled: an empty channel
                # must not stay behind. Someone may have come meanwhile: they wait for this lock
                # and will subscribe again on the same state, which must stay where deliveries
                # find it.
                if not state.members and not state.pending and self._channels.get(channel) is state:
                    del self._channels[channel]

    def subscriber_count(self, channel: str) -> int:
        """How many local subscribers ``channel`` has."""
        state = self._channels.get(channel)
        return len(state.members) if state is not None else 0

    def channels_of(self, subscriber: Subscriber) -> frozenset[str]:
        """The channels ``subscriber`` is subscribed to."""
        return frozenset(self._subscriptions.get(subscriber.subscriber_id, ()))

    @property
    def channel_count(self) -> int:
        """How many channels have local subscribers."""
        return len(self._channels)

    # -- presence ---------------------------------------------------------------------------

    async def join(self, group: str, member: str, name: str) -> None:
        """Record ``member`` as present in ``group`` under ``name`` (in every process)."""
        self._check_started()
        await self.backend.join(group, member, name)

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group``."""
        self._check_started()
        await self.backend.leave(group, member)

    async def members(self, group: str) -> list[str]:
        """Names present in ``group``, in the order they joined."""
        self._check_started()
        return await self.backend.members(group)

    def health(self) -> BackendHealth:
        """The backend's health now."""
        return self.backend.health()
