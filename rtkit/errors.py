"""The exceptions rtkit raises, all under one root.

```
RtkitError
├── ConfigurationError      an endpoint, router or hub is declared or wired wrongly
├── NotStartedError         a hub or backend was used before ``startup()`` (or after ``shutdown()``)
├── NoMessagePackFormError  a message cannot be sent to a MessagePack connection
├── HandshakeRefusedError   raised by an authenticator or hook to refuse a handshake, with why
└── BackendError            the backend could not do what was asked
    └── BackendUnavailableError   the backend's server is out of reach right now
```

Mistakes a *peer* makes (a malformed frame, an unknown message type) are never raised to user
code: the endpoint answers them on the wire with an error frame or a close code.
"""

from __future__ import annotations

from rtkit.status import CloseCode

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
    "HandshakeRefusedError",
    "NoMessagePackFormError",
    "NotStartedError",
    "RtkitError",
]


class RtkitError(Exception):
    """The root of every exception rtkit raises on purpose."""


class ConfigurationError(RtkitError, TypeError):
    """An endpoint, router or hub was declared or wired in a way that cannot work."""


class NotStartedError(RtkitError, RuntimeError):
    """A hub or backend was used before ``startup()`` or after ``shutdown()``."""


class NoMessagePackFormError(RtkitError, ValueError):
    """A JSON message holds a value MessagePack cannot (an integer beyond 64 bits, a number
    out of a double's range), so a MessagePack connection cannot be sent it."""


class HandshakeRefusedError(RtkitError):
    """Refuses a WebSocket handshake before accept, saying why.

    Raise it from an ``Authenticator``, ``on_handshake`` or ``on_connect`` (before accepting).
    The client gets an HTTP ``status`` response whose body is ``reason`` (or a close with
    ``code`` on a server without denial responses), and the log one WARNING line. The reason
    reaches the peer: plain words, never a secret or a token.

    Args:
        reason: why, in plain words (``"invalid token"``).
        status: the HTTP status: 403 by default, 503 for "try again later".
    """

    def __init__(self, reason: str, *, status: int = 403) -> None:
        super().__init__(reason)
        self.reason = reason
        self.status = status

    @property
    def code(self) -> int:
        """The close code for a server that cannot send an HTTP response: 1013 for a 503,
        1011 for another 5xx, 1008 otherwise."""
        return refusal_close_code(self.status)


def refusal_close_code(status: int) -> int:
    """The close code that stands for a refusal's HTTP ``status`` where no response can be sent."""
    if status == 503:
        return CloseCode.TRY_AGAIN_LATER
    return CloseCode.INTERNAL_ERROR if status >= 500 else CloseCode.POLICY_VIOLATION


class BackendError(RtkitError):
    """The backend failed to carry out a publish, subscribe or presence call."""


class BackendUnavailableError(BackendError):
    """The backend's server cannot be reached now; callers may retry later (HTTP 503)."""
