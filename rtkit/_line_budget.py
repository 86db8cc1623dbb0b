"""A budget of log lines per second, so that a flood of peers cannot flood the log."""

from __future__ import annotations

__all__ = ["LineBudget"]


class LineBudget:
    """Allows ``per_second`` lines in each one-second window and counts the ones held back.

    ``take(now)`` returns None when a line must not be written, else how many lines were held
    back since the last one written (for that line to mention). Pure: the caller passes the
    clock, so tests feed it times.
    """

    def __init__(self, per_second: int) -> None:
        self.per_second = per_second
        self._window_start = float("-inf")
        self._used = 0
        self._held_back = 0

    def take(self, now: float) -> int | None:
        """Spend one line at ``now`` (seconds, monotonic): None if none is left in this second."""
        if now - self._window_start >= 1.0:
            self._window_start = now
            self._used = 0
        if self._used >= self.per_second:
            self._held_back += 1
            return None
        self._used += 1
        held_back, self._held_back = self._held_back, 0
        return held_back
