"""The bounded, per-connection queue of outgoing frames and its single writer.

Why not an ``anyio`` memory stream or ``asyncio.Queue``: the healthy path must cost little more
than a direct send. Here an offer is a deque append, the writer is woken only when it is idle,
and one wake-up drains everything queued meanwhile.
"""

from __future__ import annotations

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
        "_queue",
        "_wakeup",
        "dropped",
        "max_bytes",
        "max_messages",
        "metrics",
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
        self._queue: deque[tuple[dict[str, Any], int]] = deque()
        self._bytes = 0
        self._close: tuple[int, str] | None = None
        self._wakeup: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._queue)

    @property
    def queued_bytes(self) -> int:
        """Payload bytes waiting now."""
        return self._bytes

    @property
    def closing(self) -> bool:
        """Whether a close was requested (no more frames are taken)."""
        return self._close is not None

    def put(self, event: dict[str, Any], size: int) -> bool:
        """Queue an ASGI send event of ``size`` payload bytes; never waits.

        Returns:
            True if queued; False if refused (closing, or the overflow policy dropped it).
        """
        if self._close is not None:
            self._drop(1)
            return False
        queue = self._queue
        full = len(queue) >= self.max_messages or self._bytes + size > self.max_bytes
        if full and not self._make_room(size):
            return False
        queue.append((event, size))
        self._bytes += size
        self._wake()
        return True

    def put_front(self, event: dict[str, Any], size: int) -> bool:
        """Queue an event ahead of everything waiting (a greeting that must come first).

        It is charged against the bound like any frame but never displaces others.
        """
        if self._close is not None:
            self._drop(1)
            return False
        self._queue.appendleft((event, size))
        self._bytes += size
        self._wake()
        return True

    def _make_room(self, size: int) -> bool:
        if self.policy == "drop_oldest" and size <= self.max_bytes:
            queue = self._queue
            while queue and (len(queue) >= self.max_messages or self._bytes + size > self.max_bytes):
                _, dropped_size = queue.popleft()
                self._bytes -= dropped_size
                self._drop(1)
            return True
        if self.policy == "disconnect":
            self._drop(len(self._queue) + 1)
            self._queue.clear()
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
            self._wake()

    def _wake(self) -> None:
        wakeup = self._wakeup
        if wakeup is not None:
            self._wakeup = None
            wakeup.set()

    async def drain(self, send: Send) -> tuple[int, str]:
        """Send queued frames in order until a close is requested; then send the close.

        Returns:
            The close code and reason that were sent.
        """
        queue = self._queue
        metrics = self.metrics
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
            wakeup = self._wakeup = anyio.Event()
            await wakeup.wait()
