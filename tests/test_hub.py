"""The hub and the in-memory backend, on asyncio and on trio."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import anyio
import anyio.lowlevel
import msgspec
import pytest

from rtkit import Backend, Frame, Hub, MemoryBackend, NotStartedError
from rtkit.backends.base import Receiver
from rtkit.hub import new_subscriber_id

pytestmark = pytest.mark.anyio


class Recorder:
    """A subscriber that keeps what it is offered, and can refuse on demand."""

    def __init__(self, *, accept: bool = True) -> None:
        self.subscriber_id = new_subscriber_id()
        self.accept = accept
        self.frames: list[Frame] = []
        self.gaps: list[tuple[str, int]] = []

    def offer(self, frame: Frame) -> bool:
        if self.accept:
            self.frames.append(frame)
        return self.accept

    def on_gap(self, channel: str, missed: int) -> None:
        self.gaps.append((channel, missed))

    def decoded(self) -> list[Any]:
        return [msgspec.json.decode(frame.payload) for frame in self.frames]


async def test_using_a_hub_before_startup_says_what_to_do() -> None:
    hub = Hub()
    with pytest.raises(NotStartedError, match=r"lifespan=router\.lifespan"):
        await hub.publish("c", {"x": 1})
    with pytest.raises(NotStartedError):
        await hub.subscribe("c", Recorder())
    with pytest.raises(NotStartedError):
        await hub.members("g")


async def test_memory_backend_before_startup_says_what_to_do() -> None:
    backend = MemoryBackend()
    with pytest.raises(NotStartedError, match="start its Hub first"):
        await backend.publish("c", b"x")


async def test_publish_reaches_every_subscriber_with_one_shared_frame() -> None:
    async with Hub() as hub:
        subscribers = [Recorder() for _ in range(3)]
        for subscriber in subscribers:
            await hub.subscribe("room", subscriber)
        await hub.publish("room", {"type": "hello", "n": 1})
        frames = [s.frames for s in subscribers]
        assert all(len(f) == 1 for f in frames)
        # Encoded once: every subscriber holds the very same frame and ASGI event.
        assert frames[0][0] is frames[1][0] is frames[2][0]
        assert frames[0][0].event("json") is frames[1][0].event("json")
        assert subscribers[0].decoded() == [{"type": "hello", "n": 1}]
        counts = hub.metrics.as_dict()
        assert (counts["published"], counts["received"], counts["delivered"]) == (1, 1, 3)


async def test_channels_are_isolated_and_exclude_leaves_out_the_sender() -> None:
    async with Hub() as hub:
        sender, other, elsewhere = Recorder(), Recorder(), Recorder()
        await hub.subscribe("a", sender)
        await hub.subscribe("a", other)
        await hub.subscribe("b", elsewhere)
        await hub.publish("a", [1], exclude=sender)
        assert sender.frames == []
        assert other.decoded() == [[1]]
        assert elsewhere.frames == []
        assert hub.metrics.dropped == 0


async def test_unsubscribe_stops_delivery_and_frees_the_channel() -> None:
    async with Hub() as hub:
        first, second = Recorder(), Recorder()
        await hub.subscribe("c", first)
        await hub.subscribe("c", second)
        await hub.subscribe("c", second)  # twice is harmless
        assert hub.subscriber_count("c") == 2
        await hub.unsubscribe("c", first)
        await hub.publish("c", 1)
        assert first.frames == []
        assert second.decoded() == [1]
        await hub.unsubscribe("c", second)
        await hub.unsubscribe("c", second)  # unknown pairs are ignored
        assert hub.subscriber_count("c") == 0
        assert hub.channel_count == 0
        await hub.publish("c", 2)
        assert second.decoded() == [1]


async def test_unsubscribe_all_leaves_every_channel() -> None:
    async with Hub() as hub:
        subscriber = Recorder()
        for channel in ("a", "b", "c"):
            await hub.subscribe(channel, subscriber)
        assert hub.channels_of(subscriber) == {"a", "b", "c"}
        await hub.unsubscribe_all(subscriber)
        assert hub.channels_of(subscriber) == frozenset()
        assert hub.channel_count == 0
    await hub.unsubscribe_all(subscriber)  # after shutdown: nothing to do, no error


async def test_a_cancelled_unsubscribe_all_still_leaves_every_channel() -> None:
    # The backend never confirms an unsubscribe (Redis out of reach, say) and the caller's
    # deadline cancels the wait: the subscriber must be out of every channel all the same,
    # and the channels it emptied must not stay behind.
    channels = [f"c{i}" for i in range(8)]
    entered: list[str] = []
    all_entered = anyio.Event()

    class NeverConfirms(MemoryBackend):
        async def unsubscribe(self, channel: str) -> None:
            entered.append(channel)
            if len(entered) == len(channels) - 1:  # c0 keeps a member: it is not released
                all_entered.set()
            await anyio.sleep_forever()

    async with Hub(NeverConfirms()) as hub:
        leaving, staying = Recorder(), Recorder()
        for channel in channels:
            await hub.subscribe(channel, leaving)
        await hub.subscribe("c0", staying)
        with anyio.fail_after(5):
            async with anyio.create_task_group() as tg:
                tg.start_soon(hub.unsubscribe_all, leaving)
                # The emptied channels are released together, not one after another: all of
                # them reach the backend although none is ever confirmed.
                await all_entered.wait()
                tg.cancel_scope.cancel()
        assert sorted(entered) == channels[1:]
        assert hub.channels_of(leaving) == frozenset()
        assert hub.channel_count == 1  # only c0, which `staying` still holds
        for channel in channels:
            await hub.publish(channel, channel)
        assert leaving.frames == []
        assert staying.decoded() == ["c0"]


async def test_a_failing_backend_unsubscribe_is_logged_and_the_channel_freed(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Failing(MemoryBackend):
        async def unsubscribe(self, channel: str) -> None:
            raise OSError("connection reset")

    async with Hub(Failing()) as hub:
        subscriber = Recorder()
        for channel in ("a", "b"):
            await hub.subscribe(channel, subscriber)
        await hub.unsubscribe_all(subscriber)
        assert hub.channel_count == 0
        assert hub.channels_of(subscriber) == frozenset()
    warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
    assert sorted(warnings) == [
        f"could not release channel {c!r} at the backend: OSError('connection reset')" for c in ("a", "b")
    ]


async def test_a_subscriber_that_raises_costs_only_itself_the_message(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Broken(Recorder):
        def offer(self, frame: Frame) -> bool:
            raise RuntimeError("cannot take it")

    async with Hub() as hub:
        before, broken, after = Recorder(), Broken(), Recorder()
        for subscriber in (before, broken, after):
            await hub.subscribe("c", subscriber)
        await hub.publish("c", {"n": 1})  # the publisher is not told of the member's failure
        assert before.decoded() == after.decoded() == [{"n": 1}]
        assert hub.metrics.dropped == 1
        assert hub.metrics.delivered == 2
    assert "a subscriber of 'c' failed to take a message" in caplog.text


async def test_only_accepted_frames_count_as_delivered() -> None:
    async with Hub() as hub:
        full, fine = Recorder(accept=False), Recorder()
        await hub.subscribe("c", full)
        await hub.subscribe("c", fine)
        await hub.publish("c", "x")
        # The refusing outbox counts its own drop (it knows why); the hub counts deliveries.
        assert hub.metrics.delivered == 1


async def test_publish_event_reaches_topic_subscribers() -> None:
    async with Hub() as hub:
        subscriber = Recorder()
        await hub.subscribe("topic:news", subscriber)
        await hub.publish_event("news", {"headline": "hi"})
        assert subscriber.decoded() == [{"type": "event", "topic": "news", "data": {"headline": "hi"}}]


async def test_publish_encoded_sends_bytes_as_they_are() -> None:
    async with Hub() as hub:
        subscriber = Recorder()
        await hub.subscribe("c", subscriber)
        await hub.publish_encoded("c", b'{"already":"json"}')
        assert subscriber.frames[0].payload == b'{"already":"json"}'


async def test_a_gap_reported_by_the_backend_reaches_the_channel_subscribers() -> None:
    async with Hub() as hub:
        on_channel, elsewhere = Recorder(), Recorder()
        await hub.subscribe("c", on_channel)
        await hub.subscribe("d", elsewhere)
        hub.gap("c", 3)
        hub.gap("nobody-listens", 1)
        assert on_channel.gaps == [("c", 3)]
        assert elsewhere.gaps == []
        assert hub.metrics.gaps == 2


class GapFails(Recorder):
    def on_gap(self, channel: str, missed: int) -> None:
        raise RuntimeError("this subscriber's gap handler is broken")


async def test_a_subscriber_whose_gap_handler_raises_costs_the_others_nothing(
    caplog: pytest.LogCaptureFixture,
) -> None:
    async with Hub() as hub:
        before, broken, after = Recorder(), GapFails(), Recorder()
        for subscriber in (before, broken, after):
            await hub.subscribe("c", subscriber)
        hub.gap("c", 2)  # the backend's call: nothing may escape into it
        assert before.gaps == after.gaps == [("c", 2)]
        assert "failed to take a gap notice" in caplog.text
        await hub.publish("c", 1)  # the channel still delivers to everyone
        assert before.decoded() == after.decoded() == broken.decoded() == [1]


class _Looping(BaseException):
    """Raised by a log handler to stop a loop that logs the same failure without end."""


class _StopAfter(logging.Handler):
    def __init__(self, records: int) -> None:
        super().__init__()
        self.records = records

    def emit(self, record: logging.LogRecord) -> None:
        self.records -= 1
        if self.records < 0:
            raise _Looping("the hub logged the same failure again and again")


async def test_an_offer_that_changes_the_members_costs_this_message_not_a_hang(
    caplog: pytest.LogCaptureFixture,
) -> None:
    class Leaves(Recorder):
        """Takes the frame, then (against the rules) leaves the channel on the spot."""

        def offer(self, frame: Frame) -> bool:
            super().offer(frame)
            leaving = hub.unsubscribe("c", self)
            with contextlib.suppress(StopIteration):
                leaving.send(None)  # runs to its end at once: nothing in it waits
            return True

    stop = _StopAfter(10)
    logging.getLogger("rtkit").addHandler(stop)
    try:
        async with Hub() as hub:
            leaver, others = Leaves(), [Recorder() for _ in range(3)]
            for subscriber in (leaver, *others):
                await hub.subscribe("c", subscriber)
            await hub.publish("c", 1)  # returns: the loop gave up on this message
            assert leaver.decoded() == [1]
            assert "changed the channel's members" in caplog.text
            await hub.publish("c", 2)  # and the channel goes on without the leaver
            assert leaver.decoded() == [1]
            assert all(other.decoded()[-1] == 2 for other in others)
    finally:
        logging.getLogger("rtkit").removeHandler(stop)


async def test_presence_keeps_join_order_and_forgets_who_left() -> None:
    async with Hub() as hub:
        await hub.join("room", "1", "ann")
        await hub.join("room", "2", "bob")
        await hub.join("other", "3", "cid")
        assert await hub.members("room") == ["ann", "bob"]
        await hub.leave("room", "1")
        await hub.leave("room", "unknown")
        assert await hub.members("room") == ["bob"]
        await hub.leave("room", "2")
        assert await hub.members("room") == []
        assert await hub.members("other") == ["cid"]


async def test_starts_nest_and_the_last_shutdown_stops() -> None:
    hub = Hub()
    await hub.startup()
    await hub.startup()
    await hub.shutdown()
    assert hub.started
    await hub.publish("c", 1)
    await hub.shutdown()
    assert not hub.started
    await hub.shutdown()  # harmless
    assert hub.health().state == "up"


async def test_concurrent_subscribers_share_one_backend_subscription() -> None:
    calls: list[str] = []

    class Counting(MemoryBackend):
        async def subscribe(self, channel: str) -> None:
            calls.append(channel)
            await anyio.lowlevel.checkpoint()  # yield, so that the second subscriber arrives meanwhile
            await super().subscribe(channel)

    async with Hub(Counting()) as hub:
        first, second = Recorder(), Recorder()
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.subscribe, "c", first)
            tg.start_soon(hub.subscribe, "c", second)
        assert calls == ["c"]
        await hub.publish("c", 1)
        assert len(first.frames) == len(second.frames) == 1


async def test_a_failed_backend_subscribe_leaves_no_channel_behind() -> None:
    class Failing(MemoryBackend):
        async def subscribe(self, channel: str) -> None:
            raise OSError("down")

    async with Hub(Failing()) as hub:
        with pytest.raises(OSError, match="down"):
            await hub.subscribe("c", Recorder())
        assert hub.channel_count == 0


async def test_a_failed_backend_startup_leaves_the_hub_stopped() -> None:
    class Failing(MemoryBackend):
        async def startup(self, receiver: Receiver) -> None:
            raise OSError("no server")

    hub = Hub(Failing())
    with pytest.raises(OSError, match="no server"):
        await hub.startup()
    assert not hub.started


def test_a_backend_missing_part_of_the_contract_fails_at_construction() -> None:
    class Incomplete(Backend):
        async def startup(self, receiver: Receiver) -> None: ...

    with pytest.raises(TypeError, match="abstract"):
        Incomplete()  # type: ignore[abstract]


def test_frames_convert_to_msgpack_once() -> None:
    frame = Frame(b'{"type":"event","data":[1,2]}')
    event = frame.event("msgpack")
    assert event is frame.event("msgpack")
    assert msgspec.msgpack.decode(event["bytes"]) == {"type": "event", "data": [1, 2]}
    assert frame.event("json")["text"] == '{"type":"event","data":[1,2]}'
    assert frame.size == len(frame.payload)


def test_tokens_are_unique() -> None:
    assert len({new_subscriber_id() for _ in range(1000)}) == 1000
