"""The bounded, per-connection queue of outgoing frames and its single writer.

Why not an ``anyio`` memory stream or ``asyncio.Queue``: the healthy path must cost little more
than a direct send. Here an offer is a deque append, the writer is woken only when it is idle,
and one wake-up drains everything queued meanwhile. On asyncio the writer parks on a bare
future of the loop (an ``anyio.Event`` costs several times more to make, and one is needed per
wake-up); on trio it parks on an ``anyio.Event``.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from typing import Any, Literal, TypeAlias

import anyio

from rtkit._types import Send
from rtkit.metrics import Metrics

__all__ = ["Outbox", "OverflowPolicy"]

OverflowPolicy: TypeAlias = Literal["disconnect", "drop_oldest", "drop_newest"]
"""What a full outbox does with one more frame:

- ``disconnect``: drop everything queued and close the socket with 1013 (try again later);
- ``drop_oldest``: discard the oldest queued frames until the new one fits;
- ``drop_newest``: discard the new frame.
"""

SLOW_CONSUMER_CLOSE = 1013


class Outbox:
    """Frames waiting for one socket, bounded in count and bytes.

    Args:
        max_bytes: the most payload bytes held at once.
        max_messages: the most frames held at once.
        policy: what to do when one more frame does not fit.
        metrics: where frames sent and dropped are counted.
        on_overflow: called once when the ``disconnect`` policy gives up on the socket.
    """

    __slots__ = (
        "_bytes",
        "_close",
        "_flushing",
        "_wake_pending",
        "_wakeup",
        "closing",
        "dropped",
        "max_bytes",
        "max_messages",
        "metrics",
        "on_overflow",
        "overflowed",
        "policy",
        "queue",
    )

    def __init__(
        self,
        *,
        max_bytes: int,
        max_messages: int,
        policy: OverflowPolicy,
        metrics: Metrics | None = None,
        on_overflow: Callable[[], None] | None = None,
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
        self._flushing = False
        self._wake_pending = False

    def __len__(self) -> int:
        return len(self.queue)

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting now."""
        return self._bytes

    def put(self, event: dict[str, Any], size: int, *, wake: bool = True) -> bool:
        """Queue an ASGI send event of ``size`` payload bytes; never waits.

        With ``wake=False`` the writer is left asleep: the caller promises to call ``flush``
        soon (the receive loop does, after each handler), which sends inline when it can.

        Returns:
            True if queued; False if refused (closing, or the overflow policy dropped it).
        """
        if self.closing:
            self._drop(1)
            return False
        queue = self.queue
        full = len(queue) >= self.max_messages or self._bytes + size > self.max_bytes
        if full and not self._make_room(size):
            return False
        queue.append((event, size))
        self._bytes += size
        if wake and self._wakeup is not None:
            self._wake()
        return True

    def put_front(self, event: dict[str, Any], size: int) -> bool:
        """Queue an event ahead of everything waiting (a greeting that must come first).

        It is charged against the bound like any frame but never displaces others.
        """
        if self._close is not None:
            self._drop(1)
            return False
        self.queue.appendleft((event, size))
        self._bytes += size
        self._wake()
        return True

    def _make_room(self, size: int) -> bool:
        if self.policy == "drop_oldest" and size <= self.max_bytes:
            queue = self.queue
            while queue and (len(queue) >= self.max_messages or self._bytes + size > self.max_bytes):
                _, dropped_size = queue.popleft()
                self._bytes -= dropped_size
                self._drop(1)
            return True
        if self.policy == "disconnect":
            self._drop(len(self.queue) + 1)
            self.queue.clear()
            self._bytes = 0
            self.overflowed = True
            self.metrics.slow_consumer_disconnects += 1
            self.close(SLOW_CONSUMER_CLOSE, "slow consumer")
            if self.on_overflow is not None:
                self.on_overflow()
            return False
        self._drop(1)  # drop_newest, or a frame larger than the whole bound
        return False

    def _drop(self, count: int) -> None:
        self.dropped += count
        self.metrics.dropped += count

    def close(self, code: int, reason: str = "") -> None:
        """Ask the writer to send a close frame after what is queued; later frames are refused."""
        if self._close is None:
            self._close = (code, reason)
            self.closing = True
            self._wake()

    def _wake(self) -> None:
        if self._flushing:
            self._wake_pending = True  # the flush sends it, or wakes the writer when done
            return
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            if isinstance(wakeup, anyio.Event):
                wakeup.set()
            elif not wakeup.done():  # a cancelled writer leaves a cancelled future behind
                wakeup.set_result(None)

    async def flush(self, send: Send) -> None:
        """Send what waits now, from the caller's task when the writer is asleep.

        A reply to a request costs no task switch this way: the receive loop that queued it
        sends it. When the writer is already awake (or a close is due) it is left to the writer,
        so frames never go out from two tasks at once. A failed send means the peer is gone.
        """
        queue = self.queue
        if not queue or self._wakeup is None or self._close is not None or self._flushing:
            if queue or self._close is not None:
                self._wake()
            return
        self._flushing = True
        metrics = self.metrics
        try:
            while queue:
                event, size = queue.popleft()
                self._bytes -= size
                await send(event)
                metrics.messages_out += 1
        except RuntimeError as exc:  # wsproto's word for a socket it already closed
            raise ConnectionResetError(str(exc)) from exc
        finally:
            self._flushing = False
        if self._wake_pending or self._close is not None:
            self._wake_pending = False
            self._wake()

    async def drain(self, send: Send) -> tuple[int, str]:
        """Send queued frames in order until a close is requested; then send the close.

        Returns:
            The close code and reason that were sent.
        """
        queue = self.queue
        metrics = self.metrics
        try:
            loop: asyncio.AbstractEventLoop | None = asyncio.get_running_loop()
        except RuntimeError:  # trio
            loop = None
        while True:
            while queue:
                event, size = queue.popleft()
                self._bytes -= size
                await send(event)
                metrics.messages_out += 1
            if self._close is not None:
                code, reason = self._close
                await send({"type": "websocket.close", "code": code, "reason": reason})
                return code, reason
            if loop is not None:
                future: asyncio.Future[None] = loop.create_future()
                self._wakeup = future
                await future
            else:
                event_ = self._wakeup = anyio.Event()
                await event_.wait()
