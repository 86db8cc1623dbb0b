"""A bounded buffer of received ASGI messages, used only once a handler has proved slow.

Normally the receive loop reads the socket itself, with no buffer between. When a handler
stalls the loop, a pump task takes over reading into this inbox (see
``RealtimeEndpoint._take_over_receiving``): the server keeps reading the socket, pongs and
all, while the handlers catch up. When the inbox is full the pump stops reading, which is
TCP backpressure on a client that sends faster than it is served.
"""

from __future__ import annotations

from collections import deque

import anyio

from rtkit._types import Message

__all__ = ["Inbox"]


class Inbox:
    """Messages between the pump (one producer) and the receive loop (one consumer)."""

    __slots__ = ("_items", "_message_ready", "_room_ready", "capacity")

    def __init__(self, capacity: int) -> None:
        self.capacity = capacity
        self._items: deque[Message] = deque()
        self._message_ready: anyio.Event | None = None
        self._room_ready: anyio.Event | None = None

    def __len__(self) -> int:
        return len(self._items)

    def put(self, message: Message) -> None:
        """Add a message (the pump checks for room first)."""
        self._items.append(message)
        if self._message_ready is not None:
            self._message_ready.set()
            self._message_ready = None

    async def get(self) -> Message:
        """The oldest message, waiting for one if needed."""
        while not self._items:
            event = self._message_ready = anyio.Event()
            await event.wait()
        message = self._items.popleft()
        if self._room_ready is not None:
            self._room_ready.set()
            self._room_ready = None
        return message

    async def wait_for_room(self) -> None:
        """Return once the inbox can take one more message."""
        while len(self._items) >= self.capacity:
            event = self._room_ready = anyio.Event()
            await event.wait()
