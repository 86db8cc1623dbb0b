"""How ``RedisBackend`` runs a command: bounded in time, its failures named in rtkit's terms."""

from __future__ import annotations

import contextlib
import time
from collections.abc import AsyncIterator

import anyio
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from rtkit.errors import BackendError, BackendUnavailableError

__all__ = ["CommandGuard", "describe"]

# An unreachable, dead or unresponsive server, as redis-py and asyncio report it.
_UNAVAILABLE = (RedisConnectionError, RedisTimeoutError, OSError, TimeoutError)


def describe(exc: BaseException) -> str:
    """A one-line account of an error, for logs and ``BackendHealth.last_error``."""
    text = str(exc)
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


class CommandGuard:
    """Bounds each command by ``timeout`` and remembers how the last ones went.

    Args:
        timeout: seconds a command may take, waiting for a pooled connection included.
        window: seconds a failure keeps counting for ``failing`` (unless a success follows).
    """

    def __init__(self, timeout: float, window: float) -> None:
        self._timeout = timeout
        self._window = window
        self._ok_at = 0.0
        self.last_error: str | None = None
        """The last command failure, e.g. ``"publish to 'room': no answer in time"``."""
        self.last_error_at = 0.0
        """When it happened (``time.monotonic()``)."""

    @contextlib.asynccontextmanager
    async def __call__(self, what: str) -> AsyncIterator[None]:
        """Run the block as the command ``what``.

        Raises:
            BackendUnavailableError: Redis is out of reach, or did not answer within ``timeout``.
            BackendError: Redis answered with an error.
        """
        try:
            with anyio.fail_after(self._timeout):
                yield
        except _UNAVAILABLE as exc:
            error = "no answer in time" if isinstance(exc, TimeoutError) else describe(exc)
            self.last_error, self.last_error_at = f"{what}: {error}", time.monotonic()
            raise BackendUnavailableError(
                f"Redis is out of reach: {what} failed ({error}); retry later"
            ) from exc
        except RedisError as exc:
            raise BackendError(f"Redis refused {what}: {describe(exc)}") from exc
        self._ok_at = time.monotonic()

    def failing(self) -> bool:
        """Whether a command failed within ``window`` seconds, with no success since."""
        return self.last_error_at > self._ok_at and time.monotonic() - self.last_error_at < self._window
