"""The limits an endpoint enforces on each connection, and the small policies behind them.

Every limit answers a peer on the wire, never with a traceback (RFC 6455 section 7.4 codes):

| limit | over it |
| --- | --- |
| ``max_message_bytes`` | close 1009 |
| ``rate`` / ``burst`` (token bucket) | error frame ``rate_limited``; close 1008 past |
| | ``max_rate_violations`` refusals in a row |
| ``max_invalid_frames`` in a row | close 1008 |
| ``max_connections`` / ``max_connections_per_principal`` | refused before accept: HTTP 503 |
| | with Retry-After (close 1013 where the server cannot answer HTTP) |
| ``max_topics`` per connection | error frame ``limit_exceeded`` |
| topic or room name rules | error frame ``invalid_topic`` |
| ``idle_timeout`` with no inbound frame | close 1001 |
| ``outbox_max_bytes`` / ``outbox_max_messages`` | the ``overflow`` policy (``disconnect``: close 1013) |
"""

from __future__ import annotations

import re
import time
from typing import Final, Literal, TypeAlias

import msgspec

from rtkit.errors import ConfigurationError

__all__ = ["TOPIC_NAME_RULE", "Limits", "OverflowPolicy", "TokenBucket", "topic_name_error"]

TOPIC_NAME_RULE: Final = "1 to 255 characters among A-Z a-z 0-9 and _ - . : @ /"
_TOPIC_NAME = re.compile(r"[A-Za-z0-9_\-.:@/]{1,255}")


def topic_name_error(name: str) -> str | None:
    """Why ``name`` is not a valid topic or room name, or None if it is.

    The character set leaves out every pattern character (``* ? [ ]``) so that a name can
    never widen a subscription on any backend.
    """
    if _TOPIC_NAME.fullmatch(name):
        return None
    return f"invalid name {name[:40]!r}: use {TOPIC_NAME_RULE}"


OverflowPolicy: TypeAlias = Literal["disconnect", "drop_oldest", "drop_newest"]
"""What a full outbox does with one more frame:

- ``disconnect``: drop everything queued and close the socket with 1013 (try again later);
- ``drop_oldest``: discard the oldest queued frames until the new one fits (a frame that
  cannot fit beside a send under way is discarded itself);
- ``drop_newest``: discard the new frame.
"""


class Limits(msgspec.Struct, frozen=True, kw_only=True):
    """Per-connection limits of an endpoint; ``None`` turns a limit off.

    Set them on the class (``limits = Limits(rate=5)``), per route
    (``router.add(path, Endpoint, limits=...)``), or from ``rtkit serve`` flags.
    """

    max_message_bytes: int = 64 * 1024
    """Largest inbound frame, in bytes; a larger one closes the socket with 1009."""
    rate: float | None = 50.0
    """Inbound frames per second allowed on average (token bucket refill rate)."""
    burst: int = 100
    """Inbound frames allowed at once above the average (token bucket size)."""
    max_rate_violations: int = 20
    """Rate-limited frames in a row after which the socket is closed with 1008."""
    max_invalid_frames: int = 10
    """Invalid frames in a row after which the socket is closed with 1008."""
    max_topics: int = 128
    """Topics one connection may be subscribed to at once."""
    max_connections: int | None = 10_000
    """Open connections per process (per hub) for endpoints with these limits."""
    max_connections_per_principal: int | None = None
    """Open connections per authenticated principal, per process."""
    retry_after: int = 5
    """Seconds a refused client is told to wait (HTTP Retry-After)."""
    idle_timeout: float | None = None
    """Seconds without an inbound frame after which the socket is closed with 1001."""
    heartbeat_interval: float | None = None
    """Seconds between ``{"type": "heartbeat"}`` frames, for proxies that drop quiet sockets."""
    outbox_max_bytes: int = 1 << 20
    """Payload bytes held for one socket at most: queued, or in a send that has not ended."""
    outbox_max_messages: int = 4096
    """Frames queued for one socket at most."""
    overflow: OverflowPolicy = "disconnect"
    """What a full outbox does: close 1013, ``drop_oldest`` or ``drop_newest``."""
    slow_close_timeout: float = 5.0
    """Seconds a slow consumer gets to take its close frame before the server lets it go."""
    stall_check_interval: float | None = 5.0
    """Seconds between checks for a handler that blocks the receive loop (see the README)."""
    inbox_max_messages: int = 64
    """Frames buffered while a slow handler runs; past it reading pauses (TCP backpressure)."""

    def __post_init__(self) -> None:
        positive = {
            "max_message_bytes": self.max_message_bytes,
            "burst": self.burst,
            "max_rate_violations": self.max_rate_violations,
            "max_invalid_frames": self.max_invalid_frames,
            "outbox_max_bytes": self.outbox_max_bytes,
            "outbox_max_messages": self.outbox_max_messages,
            "inbox_max_messages": self.inbox_max_messages,
            "slow_close_timeout": self.slow_close_timeout,
        }
        optional = {
            "rate": self.rate,
            "max_connections": self.max_connections,
            "max_connections_per_principal": self.max_connections_per_principal,
            "idle_timeout": self.idle_timeout,
            "heartbeat_interval": self.heartbeat_interval,
            "stall_check_interval": self.stall_check_interval,
        }
        # "not > 0" rather than "<= 0": NaN compares false either way, and a NaN rate would
        # turn the rate limit off without a word.
        bad = [name for name, value in positive.items() if not value > 0]
        bad += [name for name, value in optional.items() if value is not None and not value > 0]
        if self.max_topics < 0:
            bad.append("max_topics")
        if bad:
            raise ConfigurationError(f"Limits: {', '.join(bad)} must be positive (or None to turn it off)")


class TokenBucket:
    """A token bucket: ``rate`` tokens a second, at most ``burst`` saved up."""

    __slots__ = ("_last", "_tokens", "burst", "rate")

    def __init__(self, rate: float, burst: int, *, now: float | None = None) -> None:
        self.rate = rate
        self.burst = burst
        self._tokens = float(burst)
        self._last = time.monotonic() if now is None else now

    def take(self, now: float | None = None) -> bool:
        """Spend one token if there is one (``now``: ``time.monotonic()``, if the caller has it)."""
        if now is None:
            now = time.monotonic()
        tokens = min(self.burst, self._tokens + (now - self._last) * self.rate)
        self._last = now
        if tokens >= 1.0:
            self._tokens = tokens - 1.0
            return True
        self._tokens = tokens
        return False
