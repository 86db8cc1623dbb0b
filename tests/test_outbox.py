"""The per-connection outbox: bounds, overflow policies, order, and its writer."""

from __future__ import annotations

import contextvars
from typing import Any

import anyio
import pytest

from rtkit._types import Message
from rtkit.session.outbox import Outbox


def event(n: int) -> dict[str, Any]:
    return {"type": "websocket.send", "text": str(n)}


def texts(outbox: Outbox) -> list[str]:
    return [e["text"] for e, _ in outbox.queue]


class _Socket:
    """An ASGI ``send`` that records each frame's text (or type); the frame whose text is
    ``hold`` waits for every gate in turn, as a peer that reads slowly would make it."""

    def __init__(self, *, hold: str | None = None, gates: int = 1) -> None:
        self.sent: list[str] = []
        self.hold = hold
        self.gates = [anyio.Event() for _ in range(gates)]

    async def __call__(self, message: Message) -> None:
        if self.hold is not None and message.get("text") == self.hold:
            for gate in self.gates:
                await gate.wait()
        self.sent.append(message.get("text") or message["type"])


def test_frames_queue_in_order_within_the_bounds() -> None:
    outbox = Outbox(max_bytes=100, max_messages=10, policy="disconnect")
    assert all(outbox.put(event(n), 10) for n in range(10))
    assert len(outbox) == 10
    assert outbox.queued_bytes == 100
    assert texts(outbox) == [str(n) for n in range(10)]


def test_drop_newest_refuses_what_does_not_fit() -> None:
    outbox = Outbox(max_bytes=30, max_messages=100, policy="drop_newest")
    assert [outbox.put(event(n), 10) for n in range(5)] == [True, True, True, False, False]
    assert texts(outbox) == ["0", "1", "2"]
    assert outbox.dropped == 2
    assert not outbox.closing


def test_drop_oldest_makes_room_by_bytes_and_by_count() -> None:
    outbox = Outbox(max_bytes=30, max_messages=100, policy="drop_oldest")
    for n in range(5):
        assert outbox.put(event(n), 10)
    assert texts(outbox) == ["2", "3", "4"]
    assert outbox.dropped == 2
    by_count = Outbox(max_bytes=10_000, max_messages=2, policy="drop_oldest")
    for n in range(4):
        by_count.put(event(n), 1)
    assert texts(by_count) == ["2", "3"]


def test_a_frame_larger_than_the_whole_bound_is_dropped_under_drop_oldest() -> None:
    outbox = Outbox(max_bytes=30, max_messages=100, policy="drop_oldest")
    outbox.put(event(0), 10)
    assert not outbox.put(event(1), 31)
    assert texts(outbox) == ["0"]
    assert outbox.dropped == 1


def test_disconnect_empties_the_queue_and_asks_for_close_1013() -> None:
    outbox = Outbox(max_bytes=20, max_messages=100, policy="disconnect")
    outbox.put(event(0), 10)
    outbox.put(event(1), 10)
    assert not outbox.put(event(2), 10)
    assert outbox.overflowed
    assert outbox.closing
    assert len(outbox) == 0
    assert outbox.queued_bytes == 0
    assert outbox.dropped == 3
    assert not outbox.put(event(3), 1)  # closing: nothing more is taken
    assert not outbox.put_front(event(4), 1)


def test_put_front_goes_ahead_of_what_waits() -> None:
    outbox = Outbox(max_bytes=100, max_messages=10, policy="disconnect")
    outbox.put(event(1), 1)
    outbox.put_front(event(0), 1)
    assert texts(outbox) == ["0", "1"]


@pytest.mark.anyio
async def test_the_writer_sends_everything_in_order_then_the_close() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    sent: list[Message] = []
    woke = anyio.Event()

    async def send(message: Message) -> None:
        sent.append(message)
        if len(sent) == 2:
            woke.set()

    outbox.put(event(0), 1)
    async with anyio.create_task_group() as tg:
        result: list[tuple[int, str]] = []

        async def write() -> None:
            result.append(await outbox.drain(send))

        tg.start_soon(write)
        await anyio.wait_all_tasks_blocked()  # the writer drained and now waits idle
        outbox.put(event(1), 1)  # wakes it
        with anyio.fail_after(5):
            await woke.wait()
        outbox.put(event(2), 1)
        outbox.close(4000, "bye")
        outbox.close(4001, "ignored: the first close wins")
    assert [m.get("text") for m in sent[:3]] == ["0", "1", "2"]
    assert sent[3] == {"type": "websocket.close", "code": 4000, "reason": "bye"}
    assert result == [(4000, "bye")]


# -- the eager send ----------------------------------------------------------------------------


@pytest.mark.anyio
async def test_a_frame_offered_to_a_sleeping_writer_goes_out_at_once_on_asyncio(anyio_backend: str) -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.drain, send)
        await anyio.wait_all_tasks_blocked()
        assert outbox.put(event(1), 1)
        if anyio_backend == "asyncio":
            # Sent inside put, by this task: the writer was never woken.
            assert [m["text"] for m in sent] == ["1"]
            assert len(outbox) == 0
            assert outbox.metrics.messages_out == 1
        else:  # trio has no eager path: the writer sends it
            assert sent == []
            assert texts(outbox) == ["1"]
        outbox.put(event(2), 1)
        await anyio.wait_all_tasks_blocked()
        assert [m["text"] for m in sent] == ["1", "2"]
        outbox.close(1000)
    assert outbox.metrics.messages_out == 2


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_send_that_must_wait_is_finished_by_the_writer_ahead_of_later_frames() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    socket = _Socket(hold="1")  # a peer that reads slowly
    sent, gate, send = socket.sent, socket.gates[0], socket

    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.drain, send)
        await anyio.wait_all_tasks_blocked()
        assert outbox.put(event(1), 10)  # starts, cannot finish: handed to the writer
        assert sent == []
        assert outbox.queued_bytes == 10  # still charged against the bounds
        assert outbox.put(event(2), 10)  # queues behind it
        assert texts(outbox) == ["2"]
        await anyio.wait_all_tasks_blocked()
        assert sent == []  # the writer waits on the same send
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1", "2"]
        assert outbox.queued_bytes == 0
        assert outbox.put(event(3), 10)  # the writer sleeps again: eager once more
        assert sent == ["1", "2", "3"]
        outbox.close(1000)
    assert sent[-1] == "websocket.close"
    assert outbox.metrics.messages_out == 3


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_waiting_send_is_cancelled_with_its_writer() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    cleaned: list[str] = []
    never = anyio.Event()

    async def send(message: Message) -> None:
        try:
            await never.wait()
        finally:
            cleaned.append(message["text"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(outbox.drain, send)
        await anyio.wait_all_tasks_blocked()
        outbox.put(event(1), 1)
        await anyio.wait_all_tasks_blocked()
        assert cleaned == []
        tg.cancel_scope.cancel()  # what a close deadline does to a stalled peer's writer
    assert cleaned == ["1"]
    assert outbox.metrics.messages_out == 0


class _GoneSend:
    """A server whose socket is gone: its ``send`` raises, or its ``write_now`` does."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.error = ConnectionResetError("the peer is gone")  # what uvicorn says then

    def write_now(self, message: Message) -> bool:
        if self.where == "write_now":
            raise self.error
        return False

    async def send(self, message: Message) -> None:
        raise self.error

    _writes_now_for = send


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("where", ["send", "write_now"])
@pytest.mark.anyio
async def test_a_failed_eager_send_ends_the_writer_not_the_caller(where: str) -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    gone = _GoneSend(where)
    outcome: list[BaseException] = []

    async def write() -> None:
        try:
            await outbox.drain(gone.send)
        except ConnectionResetError as exc:
            outcome.append(exc)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        await anyio.wait_all_tasks_blocked()
        assert not outbox.put(event(1), 1)  # not delivered; the caller carries on
        with anyio.fail_after(5):
            while not outcome:
                await anyio.wait_all_tasks_blocked()
    assert outcome == [gone.error]
    assert not outbox.put(event(2), 1)  # the writer has ended: nothing is taken any more
    assert texts(outbox) == []


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_an_eager_send_runs_in_the_connection_context_not_the_callers() -> None:
    who: contextvars.ContextVar[str] = contextvars.ContextVar("who", default="nobody")
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    seen: list[str] = []

    async def send(message: Message) -> None:
        seen.append(who.get())

    async def write() -> None:
        who.set("connection")
        await outbox.drain(send)

    async with anyio.create_task_group() as tg:
        tg.start_soon(write)
        await anyio.wait_all_tasks_blocked()
        who.set("publisher")
        outbox.put(event(1), 1)
        assert seen == ["connection"]
        outbox.close(1000)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # trio has no eager send
@pytest.mark.anyio
async def test_a_frame_offered_by_the_send_itself_queues_behind_it() -> None:
    # A middleware wrapping ``send`` may offer another frame to the same socket while the
    # eager send runs: it must wait its turn, not break the send that offered it.
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    sent: list[str] = []
    starts: list[None] = []

    async def send(message: Message) -> None:
        if message.get("text") == "1":
            assert outbox.put(event(2), 1)
        sent.append(message.get("text") or message["type"])

    async with anyio.create_task_group() as tg:

        def start_writer() -> None:
            starts.append(None)
            tg.start_soon(outbox.drain, send)

        outbox.attach(send, start_writer)
        assert outbox.put(event(1), 1)
        assert sent == ["1"]
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1", "2"]
        assert outbox.eager_active  # the next frame is sent eagerly again
        assert outbox.put(event(3), 1)
        await anyio.wait_all_tasks_blocked()
        outbox.close(1000)
    assert sent == ["1", "2", "3", "websocket.close"]
    assert len(starts) == 1


# -- the writer starts when first needed --------------------------------------------------------


class _Writers:
    """A ``start_writer`` for ``Outbox.attach`` that starts ``drain`` and counts the starts."""

    def __init__(self, tg: Any, outbox: Outbox, send: Any) -> None:
        self.started = 0
        self._tg, self._outbox, self._send = tg, outbox, send

    def __call__(self) -> None:
        self.started += 1
        self._tg.start_soon(self._outbox.drain, self._send)


@pytest.mark.anyio
async def test_a_writer_starts_only_when_a_frame_cannot_go_out_at_once(anyio_backend: str) -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    socket = _Socket(hold="2")
    sent, gate, send = socket.sent, socket.gates[0], socket

    async with anyio.create_task_group() as tg:
        writers = _Writers(tg, outbox, send)
        outbox.attach(send, writers)
        outbox.put(event(1), 1)
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1"]
        # On asyncio the socket took it at once: no writer; trio has no eager send.
        assert writers.started == (0 if anyio_backend == "asyncio" else 1)
        outbox.put(event(2), 1)  # cannot finish now: a writer takes over
        outbox.put(event(3), 1)
        await anyio.wait_all_tasks_blocked()
        assert writers.started == 1
        gate.set()
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1", "2", "3"]
        outbox.close(1000)
    assert sent[-1] == "websocket.close"
    assert writers.started == 1  # the parked writer was woken, never started twice


class _WritesNow:
    """A server connection whose ``send`` has a synchronous ``write_now`` beside it, as rtkit's
    uvicorn protocol has: ``write_now`` declines while ``ready`` is False."""

    def __init__(self) -> None:
        self.written: list[str] = []
        self.awaited: list[str] = []
        self.ready = True
        self.gate = anyio.Event()

    def write_now(self, message: Message) -> bool:
        if not self.ready:
            return False
        self.written.append(message["text"])
        return True

    async def send(self, message: Message) -> None:
        if message["type"] == "websocket.send" and not self.ready:
            await self.gate.wait()  # what the real send does while the transport is paused
        self.awaited.append(message.get("text") or message["type"])

    _writes_now_for = send


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_frame_the_server_can_write_now_is_written_without_awaiting_its_send() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    connection = _WritesNow()
    async with anyio.create_task_group() as tg:
        writers = _Writers(tg, outbox, connection.send)
        outbox.attach(connection.send, writers)
        assert outbox.put(event(1), 1)
        assert (connection.written, connection.awaited) == (["1"], [])
        assert outbox.metrics.messages_out == 1
        connection.ready = False  # the peer reads slowly: the server's send has to wait
        assert outbox.put(event(2), 1)
        assert outbox.put(event(3), 1)  # queued behind the waiting send, in order
        await anyio.wait_all_tasks_blocked()
        assert writers.started == 1
        connection.ready = True
        assert outbox.put(event(4), 1)  # the writer is busy: this one queues, never jumps ahead
        connection.gate.set()
        await anyio.wait_all_tasks_blocked()
        assert connection.written == ["1"]
        assert connection.awaited == ["2", "3", "4"]
        assert outbox.put(event(5), 1)  # the writer sleeps again: written at once
        assert connection.written == ["1", "5"]
        outbox.close(1000)
    assert connection.awaited[-1] == "websocket.close"
    assert outbox.metrics.messages_out == 5
    outbox.detach()
    assert not outbox.put(event(6), 1)
    assert connection.written == ["1", "5"]


@pytest.mark.anyio
async def test_frames_queued_before_attach_start_the_writer_at_attach() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    socket = _Socket()
    sent, send = socket.sent, socket

    outbox.put(event(2), 1)
    outbox.put_front(event(1), 1)  # a greeting queued while the connection was being set up
    async with anyio.create_task_group() as tg:
        writers = _Writers(tg, outbox, send)
        outbox.attach(send, writers)
        assert writers.started == 1
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1", "2"]
        outbox.close(1000)
    assert sent == ["1", "2", "websocket.close"]


@pytest.mark.anyio
async def test_a_detached_outbox_sends_nothing_and_starts_no_writer() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    starts: list[None] = []

    async def send(message: Message) -> None:  # pragma: no cover - must not be called
        raise AssertionError("sent after detach")

    outbox.put(event(0), 1)  # queued before the connection opened
    # A writer that is asked for but never runs: the frame is still queued at detach.
    outbox.attach(send, lambda: starts.append(None))
    assert texts(outbox) == ["0"]
    assert len(starts) == 1
    outbox.detach()
    assert not outbox.eager_active
    assert not outbox.put(event(1), 1)  # refused: the connection has gone
    assert not outbox.put_front(event(1), 1)  # a greeting too
    outbox.close(1000)
    assert len(starts) == 1  # neither the refused frame nor the close asked for a writer
    assert texts(outbox) == []  # nothing held for a connection that has gone
    assert outbox.queued_bytes == 0
    assert outbox.dropped == 0  # not the overflow policy's doing

    idle = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    idle.attach(send, lambda: starts.append(None))  # nothing queued: no writer yet
    idle.detach()
    assert not idle.put(event(2), 1)
    idle.close(1000)
    assert len(starts) == 1  # a writer that was never needed is not started by a late close


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_an_overflow_behind_a_waiting_send_keeps_its_bytes_counted() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=2, policy="disconnect")
    socket = _Socket(hold="1")
    sent, gate, send = socket.sent, socket.gates[0], socket

    async with anyio.create_task_group() as tg:
        writers = _Writers(tg, outbox, send)
        outbox.attach(send, writers)
        outbox.put(event(1), 10)  # waits in the writer's hands
        outbox.put(event(2), 10)
        outbox.put(event(3), 10)
        assert not outbox.put(event(4), 10)  # over the count: the disconnect policy acts
        assert outbox.overflowed
        assert outbox.queued_bytes == 10  # the send under way still holds its bytes
        gate.set()
    assert sent == ["1", "websocket.close"]
    assert outbox.queued_bytes == 0


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.anyio
async def test_a_send_that_waits_twice_is_carried_through_both_waits() -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect")
    socket = _Socket(hold="1", gates=2)  # the writer resumes the same send a second time
    sent, send = socket.sent, socket
    first, second = socket.gates

    async with anyio.create_task_group() as tg:
        outbox.attach(send, _Writers(tg, outbox, send))
        outbox.put(event(1), 1)
        outbox.put(event(2), 1)
        first.set()
        await anyio.wait_all_tasks_blocked()
        assert sent == []
        second.set()
        await anyio.wait_all_tasks_blocked()
        assert sent == ["1", "2"]
        outbox.close(1000)


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
@pytest.mark.parametrize("writer", ["started on demand", "already parked"])
@pytest.mark.anyio
async def test_an_outbox_with_eager_off_never_sends_from_the_caller(writer: str) -> None:
    outbox = Outbox(max_bytes=1000, max_messages=100, policy="disconnect", eager=False)
    socket = _Socket()

    assert not outbox.eager_capable
    async with anyio.create_task_group() as tg:
        writers = _Writers(tg, outbox, socket)
        if writer == "started on demand":
            outbox.attach(socket, writers)
        else:
            writers()  # a writer draining on its own, parked for want of frames
            await anyio.wait_all_tasks_blocked()
        assert not outbox.eager_active
        outbox.put(event(1), 1)
        assert socket.sent == []  # queued; the writer sends it
        assert writers.started == 1
        await anyio.wait_all_tasks_blocked()
        assert socket.sent == ["1"]
        outbox.close(1000)


# -- the bounds count a frame until its send ends -----------------------------------------------


@pytest.mark.anyio
@pytest.mark.parametrize("policy", ["drop_newest", "drop_oldest", "disconnect"])
async def test_a_frame_the_writer_is_sending_still_counts_against_the_bytes(policy: str) -> None:
    # eager=False: every frame goes through the writer (as on trio), which is the path that
    # took a frame's bytes off the count when it started sending it.
    outbox = Outbox(max_bytes=25, max_messages=100, policy=policy, eager=False)  # type: ignore[arg-type]
    socket = _Socket(hold="1")
    async with anyio.create_task_group() as tg:
        outbox.attach(socket, _Writers(tg, outbox, socket))
        assert outbox.put(event(1), 10)
        await anyio.wait_all_tasks_blocked()  # the writer is sending frame 1, held by the peer
        assert len(outbox) == 0
        assert outbox.queued_bytes == 10
        assert outbox.put(event(2), 10)  # 20 of 25
        taken = outbox.put(event(3), 10)  # 30 of 25: over, whatever the policy does
        assert outbox.queued_bytes <= 25
        if policy == "drop_newest":
            assert not taken
            assert texts(outbox) == ["2"]
        elif policy == "drop_oldest":
            assert taken
            assert texts(outbox) == ["3"]  # frame 2 made room; frame 1 is under way
        else:
            assert not taken
            assert outbox.overflowed
            assert outbox.queued_bytes == 10  # frame 1's send has not ended
        socket.gates[0].set()
        await anyio.wait_all_tasks_blocked()
        assert outbox.queued_bytes == 0
        outbox.close(1000)
    assert socket.sent[0] == "1"


@pytest.mark.anyio
async def test_drop_oldest_discards_a_frame_that_cannot_fit_beside_the_send_under_way() -> None:
    outbox = Outbox(max_bytes=25, max_messages=100, policy="drop_oldest", eager=False)
    socket = _Socket(hold="1")
    async with anyio.create_task_group() as tg:
        outbox.attach(socket, _Writers(tg, outbox, socket))
        outbox.put(event(1), 20)
        await anyio.wait_all_tasks_blocked()  # frame 1 (20 bytes) is being sent
        outbox.put(event(2), 5)
        # 20 under way + 10 > 25 even with the queue empty: the new frame goes, frame 2 stays.
        assert not outbox.put(event(3), 10)
        assert texts(outbox) == ["2"]
        assert outbox.dropped == 1
        assert outbox.queued_bytes == 25
        socket.gates[0].set()
        outbox.close(1000)
    assert socket.sent == ["1", "2", "websocket.close"]
