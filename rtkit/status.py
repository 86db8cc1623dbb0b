"""The codes rtkit answers peers with: WebSocket close codes and the error frames' codes.

Close codes are RFC 6455 section 7.4's (``CloseCode``, an ``IntEnum``: a member is the int it
names wherever an int is expected); error codes are the ``code`` of an ``{"type": "error"}``
frame (``ErrorCode``, a ``str`` enum: a member is the string on the wire).
"""

from __future__ import annotations

from enum import Enum, IntEnum

__all__ = ["CloseCode", "ErrorCode"]


class CloseCode(IntEnum):
    """The close codes rtkit sends or reports, with what each means here."""

    NORMAL = 1000
    """The connection did what it was for."""
    GOING_AWAY = 1001
    """The server is going away, or the peer sent nothing for ``idle_timeout``."""
    PROTOCOL_ERROR = 1002
    """A frame that breaks RFC 6455 (the server's framing answers it)."""
    NO_STATUS = 1005
    """The peer's close frame carried no code."""
    ABNORMAL = 1006
    """The connection dropped without a close frame (never sent on the wire)."""
    INVALID_DATA = 1007
    """A text frame that is not UTF-8."""
    POLICY_VIOLATION = 1008
    """Too many invalid frames or rate violations; a handshake refused where no HTTP answer
    can be sent."""
    MESSAGE_TOO_BIG = 1009
    """A frame over ``max_message_bytes``."""
    INTERNAL_ERROR = 1011
    """A fault in the server's code (logged with its traceback)."""
    SERVICE_RESTART = 1012
    """The server is restarting: reconnect."""
    TRY_AGAIN_LATER = 1013
    """A consumer too slow for its outbox, or the backend out of reach: reconnect later."""

    def __str__(self) -> str:
        return str(self.value)  # "1000", as Python 3.11 prints an IntEnum, on 3.10 too


class ErrorCode(str, Enum):
    """The ``code`` of an error frame; the connection stays open after each."""

    INVALID_MESSAGE = "invalid_message"
    """Not JSON (or MessagePack), the wrong shape, an unknown ``type``, or data one wire format
    cannot hold."""
    RATE_LIMITED = "rate_limited"
    """Over ``rate`` / ``burst``."""
    INVALID_TOPIC = "invalid_topic"
    """A topic or room name that breaks the name rule."""
    LIMIT_EXCEEDED = "limit_exceeded"
    """A subscribe past ``max_topics``."""
    FORBIDDEN = "forbidden"
    """``on_authorize`` said no."""
    UNAVAILABLE = "unavailable"
    """The backend is out of reach: the outcome is unknown; retry later."""

    def __str__(self) -> str:
        return self.value
