"""The bounded, per-connection queue of outgoing frames and its single writer.

Why not an ``anyio`` memory stream or ``asyncio.Queue``: the healthy path must cost little more
than a direct send. Here an offer is a deque append, the writer is woken only when it is idle,
and one wake-up drains everything queued meanwhile. On asyncio the writer parks on a bare
future of the loop (an ``anyio.Event`` costs several times more to make, and one is needed per
wake-up); on trio it parks on an ``anyio.Event``.

The eager send (asyncio): a frame offered while the writer sleeps with nothing queued is sent
at once by the caller, without waking the writer. An ASGI ``send`` on a socket that can take
the bytes completes without suspending, so a broadcast costs one call per member, as a plain
``for member in room: await member.send(...)`` loop does, but never waits on a member: a send
that would wait (the peer stopped reading) is handed, half run, to that socket's writer task,
and everything offered after it queues behind it under the outbox's bounds. On rtkit's own
uvicorn protocol the frame is written by the protocol's ``write_now`` instead, with no
coroutine at all; when that declines (the socket cannot take it now), the send runs as above.

The bounds (``max_bytes``, and ``max_messages`` for what is queued) count a frame until its
send has ended, not only while it is queued: a slow send and what waits behind it stay within
``max_bytes`` together. (One rare case can pass the bound, by one frame: an eager send whose
middleware offers a frame to the same socket and then has to wait; its own frame is counted
beside the one it queued.)
"""

from __future__ import annotations

import asyncio
import contextvars
import types
from collections import deque
from collections.abc import Callable, Generator
from typing import Any

import anyio

from rtkit._passthrough import write_now_of
from rtkit._types import Message, Send
from rtkit.frame import Frame
from rtkit.limits import OverflowPolicy
from rtkit.metrics import Metrics
from rtkit.status import CloseCode

__all__ = ["Outbox"]


SLOW_CONSUMER_CLOSE = CloseCode.TRY_AGAIN_LATER

_SENT = object()
_REENTERED = object()  # an eager send offered by the send running in the same context


async def _no_send(message: Message) -> None:
    raise RuntimeError("the outbox is not attached to a connection")  # pragma: no cover


@types.coroutine
def _sender() -> Generator[Any, Any, None]:
    """Runs each send coroutine handed to it to its end, then yields ``_SENT``.

    Stepping a coroutine by hand (``coro.send``) ends in a StopIteration, which costs more than
    the send itself on a fast path taken once per member per message; ``yield from`` inside
    this long-lived driver finishes it without one.
    """
    while True:
        coro = yield _SENT
        yield from coro
        del coro  # freed now, while it is still in the cache, not at the next send


# Drivers not running a send, shared by every outbox: one that is in use is out of this list,
# so a send that (through some middleware) queues to another socket gets a driver of its own,
# and threads never share one. One driver serves thousands of sockets in turn, and stays in
# the cache where a driver per socket would be read cold, member after member.
# (A deque: a list would give its storage back and take it again on every pop and append.)
_IDLE_DRIVERS: deque[Generator[Any, Any, None]] = deque()


def _nothing() -> None:
    """Run in a context to learn whether it can be entered."""


def _new_driver() -> Generator[Any, Any, None]:
    driver = _sender()
    driver.send(None)  # run to its first `yield _SENT`: ready for a send
    return driver


@types.coroutine
def _resume(
    driver: Generator[Any, Any, None], waiting: Any, context: contextvars.Context
) -> Generator[Any, Any, None]:
    """Carry on, as if awaited, a send the driver started and that had to wait.

    ``waiting`` is what the send yielded (a future of the loop, or None for a bare yield);
    the awaiting task waits on it, and each further step runs in the connection's context.
    Cancelling the awaiting task throws into the send, as awaiting it directly would.
    """
    while True:
        try:
            value = yield waiting
        except BaseException as exc:  # cancellation, or this generator being closed
            waiting = context.run(driver.throw, exc)
        else:
            waiting = context.run(driver.send, value)
        if waiting is _SENT:
            return


class Outbox:
    """Frames waiting for one socket, bounded in count and bytes.

    Args:
        max_bytes: the most payload bytes held at once.
        max_messages: the most frames held at once.
        policy: what to do when one more frame does not fit.
        metrics: where frames sent and dropped are counted.
        on_overflow: called once when the ``disconnect`` policy gives up on the socket.
        eager: allow the eager send (asyncio only). Turn it off for an ASGI server whose
            ``send`` ties itself to the task that calls it (an ``asyncio.timeout`` inside it,
            say): an eager send starts in the task that offers the frame. uvicorn's does not.
    """

    # The fields the eager send reads come first, so that they share as few cache lines as
    # possible: a broadcast reads them once per member, mostly from cold memory.
    __slots__ = (  # noqa: RUF023
        "queue",
        "_idle",
        "eager_active",
        "closing",
        "max_bytes",
        "_context",
        "_eager_send",
        "_write_now",
        "metrics",
        "_bytes",
        "_close",
        "_eager",
        "_failure",
        "_in_flight",
        "_sending",
        "_start_writer",
        "_wakeup",
        "_detached",
        "dropped",
        "max_messages",
        "on_overflow",
        "overflowed",
        "policy",
    )

    def __init__(
        self,
        *,
        max_bytes: int,
        max_messages: int,
        policy: OverflowPolicy,
        metrics: Metrics | None = None,
        on_overflow: Callable[[], None] | None = None,
        eager: bool = True,
    ) -> None:
        self.metrics = metrics if metrics is not None else Metrics()
        self.on_overflow = on_overflow
        self.max_bytes = max_bytes
        self.max_messages = max_messages
        self.policy = policy
        self.dropped = 0
        """Frames discarded by the overflow policy."""
        self.overflowed = False
        """True once the ``disconnect`` policy gave up on this socket."""
        self.queue: deque[tuple[dict[str, Any], int]] = deque()
        """What waits to be sent: (ASGI event, payload bytes), oldest first."""
        self._bytes = 0
        self._close: tuple[int, str] | None = None
        self.closing = False
        """Whether a close was requested (no more frames are taken)."""
        self._wakeup: asyncio.Future[None] | anyio.Event | None = None
        self._eager = eager
        # True while no writer runs or is due to run: attached and not started yet, or parked.
        self._idle = False
        self._start_writer: Callable[[], object] | None = None
        # Once attached on asyncio: the send the eager path calls, and the context it calls it
        # in (the connection's, so a middleware wrapping ``send`` sees this connection).
        self._eager_send: Send = _no_send
        # The server's synchronous write behind that send, if it has one (rtkit's protocol).
        self._write_now: Callable[[Message], bool] | None = None
        self.eager_active = False
        """Whether a frame offered while the writer sleeps is sent at once (see the module doc)."""
        self._context = contextvars.Context()
        self._in_flight: tuple[Generator[Any, Any, None], Any, int] | None = None
        # The bytes of the frame the writer is sending now: held until its send ends, so that
        # what waits behind a slow send and the send itself stay within max_bytes together.
        self._sending = 0
        self._failure: Exception | None = None
        self._detached = False

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def eager_capable(self) -> bool:
        """Whether this outbox will send eagerly once attached (eager allowed, on asyncio)."""
        if not self._eager:
            return False
        try:
            asyncio.get_running_loop()
        except RuntimeError:  # trio
            return False
        return True

    def offer_text(self, frame: Frame) -> bool:
        """Queue ``frame`` in its JSON form (the hub's fan-out entry for a JSON connection)."""
        return self.put(frame.text_event, frame.size)

    def attach(self, send: Send, start_writer: Callable[[], object]) -> None:
        """Get ready to send on a connection that is open, from that connection's task.

        The writer task is started, by calling ``start_writer`` (which must run ``drain``),
        only when one is first needed: a connection whose frames all go out eagerly never
        holds one. On asyncio this turns the eager send on, in a copy of the caller's context.
        """
        self._start_writer = start_writer
        self._idle = True
        self._enable_eager(send)
        if self.queue or self._close is not None:
            self._wake()

    def _enable_eager(self, send: Send) -> None:
        """Turn the eager send on, in a copy of the caller's context, where it is allowed."""
        if not self.eager_active and self.eager_capable:
            self._context = contextvars.copy_context()
            self._eager_send = send
            self._write_now = write_now_of(send)
            self.eager_active = True

    def detach(self) -> None:
        """The connection is over: send nothing more, start no writer, take nothing more.

        What was queued is let go, and later offers are refused (``put`` returns False)
        without counting as drops: they were meant for a connection that has gone. (When a
        large room empties at once, each leaving member stays subscribed until its
        ``on_disconnect`` returns, and would otherwise hold every ``left`` of the others.)
        """
        self._eager_send = _no_send
        self._write_now = None
        self.eager_active = False
        self._start_writer = None
        self._idle = False
        self._detached = True
        self.queue.clear()
        self._bytes = 0
        self._sending = 0

    @property
    def queued_bytes(self) -> int:
        """Payload bytes held now: queued, or in a send that has not ended."""
        return self._bytes

    def put(self, event: dict[str, Any], size: int) -> bool:
        """Queue an ASGI send event of ``size`` payload bytes; never waits.

        Returns:
            True if taken (sent at once, or queued); False if refused (closing, the overflow
            policy dropped it, or an eager send found the peer gone).
        """
        queue = self.queue
        if not queue and self._idle and self.eager_active and not self.closing and size <= self.max_bytes:
            # The eager send. The writer sleeps and nothing is queued, so no frame is ahead of
            # this one: write it now if the server can (no user code runs then, so no context
            # is needed), else run the send here, in the connection's context.
            write_now = self._write_now
            try:
                if write_now is not None and write_now(event):
                    self.metrics.messages_out += 1
                    return True
                driver = _IDLE_DRIVERS.pop() if _IDLE_DRIVERS else _new_driver()
                sending = self._eager_send(event)
                try:
                    waiting = self._context.run(driver.send, sending)
                except RuntimeError:
                    if not self._context_entered():
                        raise
                    # The send running now offered this frame itself (a middleware wrapping
                    # ``send``): the context could not be entered again, so nothing ran.
                    close = getattr(sending, "close", None)
                    if close is not None:
                        close()  # never started: no warning that it was never awaited
                    waiting = _REENTERED
            except Exception as exc:  # the peer is gone: the writer reports it, in its own task
                self._failure = exc
                self._wake()
                return False
            if waiting is _SENT:
                _IDLE_DRIVERS.append(driver)
                self.metrics.messages_out += 1
                return True
            if waiting is not _REENTERED:
                # The socket cannot take it now (its peer reads slowly): the writer finishes
                # this send, with the driver that started it, before anything else; the frame
                # counts against the bounds until then.
                self._in_flight = (driver, waiting, size)
                self._bytes += size
                self._wake()
                return True
            # Queued behind the send that offered it, for the writer, like any frame that
            # cannot go out at once.
            _IDLE_DRIVERS.append(driver)
        if self._detached:
            return False
        if self.closing:
            self._drop(1)
            return False
        full = len(queue) >= self.max_messages or self._bytes + size > self.max_bytes
        if full and not self._make_room(size):
            return False
        queue.append((event, size))
        self._bytes += size
        if self._idle:
            self._wake()
        return True

    def _context_entered(self) -> bool:
        """Whether the connection's context is running (an eager send is under way in it)."""
        try:
            self._context.run(_nothing)
        except RuntimeError:
            return True
        return False

    def put_front(self, event: dict[str, Any], size: int) -> bool:
        """Queue an event ahead of everything waiting (a greeting that must come first).

        It is charged against the bound like any frame but never displaces others. Refused,
        like ``put``, once the connection is over (``detach``).
        """
        if self._detached:
            return False
        if self._close is not None:
            self._drop(1)
            return False
        self.queue.appendleft((event, size))
        self._bytes += size
        self._wake()
        return True

    def _make_room(self, size: int) -> bool:
        # A send under way cannot be taken back: its bytes stay held whatever is dropped.
        under_way = self._sending + (self._in_flight[2] if self._in_flight is not None else 0)
        if self.policy == "drop_oldest" and under_way + size <= self.max_bytes:
            queue = self.queue
            while queue and (len(queue) >= self.max_messages or self._bytes + size > self.max_bytes):
                _, dropped_size = queue.popleft()
                self._bytes -= dropped_size
                self._drop(1)
            return True
        if self.policy == "disconnect":
            self._drop(len(self.queue) + 1)
            self.queue.clear()
            self._bytes = under_way
            self.overflowed = True
            self.metrics.slow_consumer_disconnects += 1
            self.close(SLOW_CONSUMER_CLOSE, "slow consumer")
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self._drop(1)  # drop_newest, or a frame that cannot fit beside the send under way
        return False

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.metrics.dropped += count

    def count_dropped(self, count: int) -> None:
        """Count frames meant for this socket that never reached the outbox."""
        self._drop(count)

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to send a close frame after what is queued; later frames are refused."""
        if self._close is None:
            self._close = (code, reason)
            self.closing = True
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            self._idle = False
            if isinstance(wakeup, anyio.Event):
                wakeup.set()
            elif not wakeup.done():  # a cancelled writer leaves a cancelled future behind
                wakeup.set_result(None)
        elif self._idle and self._start_writer is not None:  # the first time a writer is needed
            self._idle = False
            self._start_writer()

    async def drain(self, send: Send) -> tuple[int, str]:
        """Send queued frames in order until a close is requested; then send the close.

        Returns:
            The close code and reason that were sent.
        """
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio
            loop = None
        self._idle = False
        self._enable_eager(send)  # for a writer started without attach
        try:
            return await self._drain(send, loop)
        finally:
            self.detach()
            in_flight, self._in_flight = self._in_flight, None
            if in_flight is not None:
                in_flight[0].close()

    async def _drain(self, send: Send, loop: asyncio.AbstractEventLoop | None) -> tuple[int, str]:
        queue = self.queue
        metrics = self.metrics
        while True:
            if self._failure is not None:
                raise self._failure
            in_flight = self._in_flight
            if in_flight is not None:
                driver, waiting, size = in_flight
                await _resume(driver, waiting, self._context)
                self._in_flight = None
                self._bytes -= size
                metrics.messages_out += 1
            while queue:
                event, size = queue.popleft()
                self._sending = size
                await send(event)
                self._sending = 0
                self._bytes -= size
                metrics.messages_out += 1
            if self._close is not None:
                code, reason = self._close
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return code, reason
            if loop is not None:
                future: asyncio.Future[None] = loop.create_future()
                self._wakeup = future
                self._idle = True
                await future
            else:
                event_ = self._wakeup = anyio.Event()
                self._idle = True
                await event_.wait()
