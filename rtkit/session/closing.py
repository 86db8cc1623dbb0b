"""Who closes a connection, with which code, and by when: one state machine. Pure code.

A connection is ``OPEN`` until someone ends it:

- the server asks to close (a guard, the idle timeout, a full outbox, the app's ``close()``):
  ``start(code, now)`` moves it to ``CLOSING``; the close frame waits behind what is already
  queued, until ``deadline``. The first request wins: a second one changes nothing.
- the close frame goes out: ``sent(code)``, ``CLOSED``, ended with that code;
- the peer takes nothing and the deadline passes: ``expire(now)``, ``CLOSED`` without a close
  frame (what stays buffered is bounded by the server's transport buffer), ended with the code
  that was asked for;
- the peer leaves: ``peer_left(code)``, ``CLOSED`` with the peer's code, unless the server's
  close frame went out (or its deadline passed) first;
- the handshake is refused before accept: ``refuse(code)``.

``code`` then says how the connection ended, which ``on_disconnect`` and the counters get.
Times come in as arguments; tests feed them.
"""

from __future__ import annotations

from enum import Enum

from rtkit.status import CloseCode

__all__ = ["Closing", "Stage"]


class Stage(Enum):
    """Where a connection is in its closing."""

    OPEN = "open"
    CLOSING = "closing"
    CLOSED = "closed"


class Closing:
    """The closing of one connection.

    Args:
        grace: seconds a requested close may wait for the peer to take what is queued before
            it (``slow_close_timeout``).
    """

    __slots__ = ("close_sent", "code", "deadline", "grace", "reason", "stage")

    def __init__(self, grace: float) -> None:
        self.grace = grace
        self.stage = Stage.OPEN
        self.code: int | None = None
        """How the connection ends (or is asked to end); None while nobody has said."""
        self.reason = ""
        self.deadline: float | None = None
        """When a requested close gives up waiting for the peer; None unless ``CLOSING``."""
        self.close_sent = False
        """Whether the server's close frame went out."""

    def start(self, code: int, reason: str, now: float) -> bool:
        """The server asks to close with ``code``: True if this request starts the closing."""
        if self.stage is not Stage.OPEN:
            return False
        self.stage = Stage.CLOSING
        self.code, self.reason = code, reason
        self.deadline = now + self.grace
        return True

    def sent(self, code: int) -> None:
        """The server's close frame, with ``code``, went out."""
        self.stage = Stage.CLOSED
        self.code = code
        self.close_sent = True
        self.deadline = None

    def expire(self, now: float) -> bool:
        """Whether a requested close has waited past its deadline: then the connection ends
        without its close frame, with the code that was asked for."""
        if self.stage is not Stage.CLOSING or self.deadline is None or now < self.deadline:
            return False
        self.stage = Stage.CLOSED
        self.deadline = None
        return True

    def peer_left(self, code: int) -> None:
        """The peer closed or vanished (``code``: its close code, 1006 without one).

        Unless the server's close frame went out first (or its deadline passed), the
        connection ended the peer's way: with the peer's code.
        """
        if self.stage is Stage.CLOSED:
            return
        self.stage = Stage.CLOSED
        self.code = code
        self.deadline = None

    def refuse(self, code: int) -> None:
        """The handshake was refused before accept."""
        self.stage = Stage.CLOSED
        self.code = code

    @property
    def ended_with(self) -> int:
        """The code the connection ended with: 1006 if it is not ``CLOSED`` (it went without
        anyone's close), or if nobody gave one."""
        if self.stage is not Stage.CLOSED or self.code is None:
            return CloseCode.ABNORMAL
        return self.code
