"""A connection's timers as pure code: idle timeout, heartbeats, and a handler that stalls.

``Watchdog.tick(now, ...)`` says what is due at ``now`` and when to look again; the endpoint's
watch task sleeps until then and carries out what is due. The time comes in as an argument,
so tests feed it times instead of waiting for them.

- **Idle timeout**: no inbound frame for ``idle_timeout`` closes with 1001. While a handler
  runs the connection is not idle (its client may be waiting for the answer, and what it sends
  meanwhile is not read yet): idleness counts from when the handler is seen done, known to
  within a quarter of the timeout.
- **Heartbeats**: one every ``heartbeat_interval``.
- **Stalled handler**: a handler running for ``stall_check_interval`` gets the socket read for
  it (see ``rtkit.session.inbox``), once.
"""

from __future__ import annotations

from typing import NamedTuple

from rtkit.limits import Limits

__all__ = ["Tick", "Watchdog"]


class Tick(NamedTuple):
    """What is due at one moment, and when to look again."""

    close_idle: bool
    """The connection has been idle for ``idle_timeout``: close it (1001); nothing else."""
    heartbeat: bool
    """Send a heartbeat frame."""
    take_over_reading: bool
    """A handler has run for ``stall_check_interval``: read the socket for it from now on."""
    wake_at: float | None
    """When to tick again; None when nothing is left to watch."""


class Watchdog:
    """The deadlines of one connection, computed from the times it is given.

    Args:
        limits: ``idle_timeout``, ``heartbeat_interval`` and ``stall_check_interval``.
        now: when the watch starts (the first heartbeat is one interval later).
    """

    __slots__ = ("_busy_at", "_limits", "_next_heartbeat")

    def __init__(self, limits: Limits, *, now: float) -> None:
        self._limits = limits
        self._next_heartbeat = now + (limits.heartbeat_interval or 0.0)
        self._busy_at = float("-inf")  # the last tick that saw a handler running

    def tick(
        self, now: float, *, last_inbound: float, handling_since: float | None, reading_taken_over: bool
    ) -> Tick:
        """What is due at ``now``.

        Args:
            now: the time.
            last_inbound: when the last frame was received.
            handling_since: when the handler now running started, or None if none runs.
            reading_taken_over: whether the socket is already read for a stalled handler.
        """
        limits = self._limits
        wake: list[float] = []
        idle_timeout = limits.idle_timeout
        if idle_timeout is not None:
            if handling_since is not None:
                self._busy_at = now
                wake.append(now + idle_timeout / 4)
            else:
                idle_at = max(last_inbound, self._busy_at) + idle_timeout
                if now >= idle_at:
                    return Tick(close_idle=True, heartbeat=False, take_over_reading=False, wake_at=None)
                wake.append(idle_at)
        heartbeat = False
        interval = limits.heartbeat_interval
        if interval is not None:
            if now >= self._next_heartbeat:
                heartbeat = True
                self._next_heartbeat = now + interval
            wake.append(self._next_heartbeat)
        take_over = False
        stall = limits.stall_check_interval
        if stall is not None and not reading_taken_over:
            if handling_since is not None and now - handling_since >= stall:
                take_over = True  # once: from then on the socket is read for the handlers
            else:
                wake.append(now + stall)
        return Tick(False, heartbeat, take_over, min(wake) if wake else None)
