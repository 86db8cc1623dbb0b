"""The exceptions rtkit raises, all under one root.

```
RtkitError
├── ConfigurationError      an endpoint, router or hub is declared or wired wrongly
├── NotStartedError         a hub or backend was used before ``startup()`` (or after ``shutdown()``)
├── NoMessagePackFormError  a message cannot be sent to a MessagePack connection
└── BackendError            the backend could not do what was asked
    └── BackendUnavailableError   the backend's server is out of reach right now
```

Mistakes a *peer* makes (a malformed frame, an unknown message type) are never raised to user
code: the endpoint answers them on the wire with an error frame or a close code.
"""

from __future__ import annotations

__all__ = [
    "BackendError",
    "BackendUnavailableError",
    "ConfigurationError",
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


class BackendError(RtkitError):
    """The backend failed to carry out a publish, subscribe or presence call."""


class BackendUnavailableError(BackendError):
    """The backend's server cannot be reached now; callers may retry later (HTTP 503)."""
