"""The contract every backend fulfils: move bytes on named channels, and keep presence lists.

A backend never sees Python objects, sockets or subscribers: the hub hands it encoded bytes and
channel names, and it hands bytes back through the ``deliver`` callback given to ``startup``.
Every abstract method below is part of the contract, so a backend that misses one fails when it
is constructed, not on first use.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Literal, Protocol

import msgspec

__all__ = ["Backend", "BackendHealth", "HealthState", "Receiver"]


class Receiver(Protocol):
    """Where a backend hands what arrives: in practice, the hub. Both calls run in the event
    loop, must not block, and must not be awaited."""

    def deliver(self, channel: str, data: bytes) -> None:
        """One message of a subscribed channel, exactly as it was published."""

    def gap(self, channel: str, missed: int) -> None:
        """``missed`` messages of ``channel`` (at least one; an estimate when unknown) were lost
        in transit, for example across a reconnect: subscribers should refetch their state."""


HealthState = Literal["up", "degraded", "down"]


class BackendHealth(msgspec.Struct, frozen=True, kw_only=True):
    """A snapshot of a backend's health, for ``/health`` and ``/metrics``."""

    state: HealthState
    last_error: str | None = None
    reconnects: int = 0


class Backend(ABC):
    """Moves opaque bytes between hubs; subclass it to add a transport.

    Contract (checked by the shared backend test suite):

    - ``startup(receiver)`` before anything else; using a backend before it raises
      ``NotStartedError``. Loop-bound resources are created there, never in ``__init__``.
    - ``subscribe(channel)`` returns only when a message published afterwards, by any process
      sharing the backend, is certain to reach ``deliver``.
    - ``publish`` delivers ``data`` unchanged to every process subscribed to ``channel``,
      in the order one publisher sent them; a backend that can lose messages detects the loss
      and reports it through ``receiver.gap``.
    - Presence: ``join``/``leave``/``members`` keep, per group, who is present across all
      processes, in the order they joined.
    """

    @abstractmethod
    async def startup(self, receiver: Receiver) -> None:
        """Connect, and hand every message of a subscribed channel to ``receiver``."""

    @abstractmethod
    async def shutdown(self) -> None:
        """Disconnect and release everything ``startup`` acquired. Safe to call twice."""

    @abstractmethod
    async def publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``channel`` in every process."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``; returns once later publishes are certain to arrive."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``."""

    @abstractmethod
    async def join(self, group: str, member: str, name: str) -> None:
        """Record that ``member`` (a unique id) is present in ``group`` under ``name``."""

    @abstractmethod
    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group``; unknown members are ignored."""

    @abstractmethod
    async def members(self, group: str) -> list[str]:
        """The names present in ``group``, in the order they joined."""

    def health(self) -> BackendHealth:
        """The backend's health now. An in-process backend is always up."""
        return BackendHealth(state="up")
