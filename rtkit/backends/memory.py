"""The in-process backend: one process, no network, delivery before ``publish`` returns."""

from __future__ import annotations

from rtkit.backends.base import Backend, Receiver
from rtkit.errors import NotStartedError

__all__ = ["MemoryBackend"]


class MemoryBackend(Backend):
    """Moves bytes within one process; the default backend of a ``Hub``.

    It holds no loop-bound state, so it runs on asyncio and trio alike. ``publish`` hands the
    bytes to the hub synchronously; the hub's fan-out only queues them on outboxes, so a slow
    socket never slows the publisher.
    """

    def __init__(self) -> None:
        self._receiver: Receiver | None = None
        self._channels: set[str] = set()
        self._groups: dict[str, dict[str, str]] = {}

    def _started(self) -> Receiver:
        if self._receiver is None:
            raise NotStartedError(
                "MemoryBackend is not started: start its Hub first (`await hub.startup()`, "
                "`async with hub:`, or the lifespan of RealtimeRouter)."
            )
        return self._receiver

    async def startup(self, receiver: Receiver) -> None:
        self._receiver = receiver

    async def shutdown(self) -> None:
        self._receiver = None
        self._channels.clear()
        self._groups.clear()

    async def publish(self, channel: str, data: bytes) -> None:
        receiver = self._started()
        if channel in self._channels:
            receiver.deliver(channel, data)

    async def subscribe(self, channel: str) -> None:
        self._started()
        self._channels.add(channel)

    async def unsubscribe(self, channel: str) -> None:
        self._started()
        self._channels.discard(channel)

    async def join(self, group: str, member: str, name: str) -> None:
        self._started()
        self._groups.setdefault(group, {})[member] = name

    async def leave(self, group: str, member: str) -> None:
        self._started()
        members = self._groups.get(group)
        if members is not None:
            members.pop(member, None)
            if not members:
                del self._groups[group]

    async def members(self, group: str) -> list[str]:
        self._started()
        return list(self._groups.get(group, {}).values())
