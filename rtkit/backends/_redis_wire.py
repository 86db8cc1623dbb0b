"""The header ``RedisBackend`` puts in front of every payload, and loss detection on receipt.

Wire format of one Redis pub/sub message (17 bytes of header, then the hub's bytes unchanged)::

    offset  size  field
    0       1     version, currently 1 (a message with another first byte is not ours)
    1       8     publisher id: random bytes, drawn when a backend starts publishing on a channel
    9       8     sequence number, unsigned big-endian, per (publisher, channel), from 1

The sequence is counted per channel, not per publisher: a process subscribed to one channel only
sees that channel's messages, so a per-publisher count would jump at every message the publisher
sent elsewhere and every jump would look like a loss.
"""

from __future__ import annotations

import struct

__all__ = ["DUPLICATE", "HEADER_SIZE", "SequenceTracker", "pack", "unpack"]

_VERSION = 1
_HEADER = struct.Struct(">B8sQ")
HEADER_SIZE = _HEADER.size
PUBLISHER_ID_SIZE = 8
_MAX_PUBLISHERS = 256  # publishers remembered per channel
DUPLICATE = -1
"""What ``SequenceTracker.check`` answers for a number already seen: drop the message."""


def pack(publisher: bytes, seq: int, data: bytes) -> bytes:
    """``data`` behind a header naming its publisher and its sequence number."""
    return _HEADER.pack(_VERSION, publisher, seq) + data


def unpack(message: bytes) -> tuple[bytes, int, bytes] | None:
    """``(publisher, seq, data)`` of a message, or None if it does not carry our header."""
    if len(message) < HEADER_SIZE or message[0] != _VERSION:
        return None
    _, publisher, seq = _HEADER.unpack_from(message)
    return publisher, seq, message[HEADER_SIZE:]


class SequenceTracker:
    """Remembers the last sequence number seen per (channel, publisher) and counts the holes.

    The first message of a publisher on a channel starts its count: what was published before
    this process subscribed is not owed to it.
    """

    __slots__ = ("_last",)

    def __init__(self) -> None:
        self._last: dict[str, dict[bytes, int]] = {}

    def check(self, channel: str, publisher: bytes, seq: int) -> int:
        """Record ``seq``; return how many messages went missing just before it, or
        ``DUPLICATE`` for a number at or below the last one seen (a resend: drop it)."""
        seen = self._last.get(channel)
        if seen is None:
            seen = self._last[channel] = {}
        last = seen.get(publisher)
        if last is not None and seq <= last:
            # A publisher never reuses a number on a channel (it spends one before sending,
            # and a forgotten channel starts again under a new id): this is a resend.
            return DUPLICATE
        if last is None:
            seen[publisher] = seq
            if len(seen) > _MAX_PUBLISHERS:
                # Publishers come and go (new ids at every start): forget the one heard from
                # least recently, never one that is still talking.
                del seen[next(iter(seen))]
            return 0
        # Moved to the end: the dict's order is the order publishers were last heard from.
        del seen[publisher]
        seen[publisher] = seq
        return seq - last - 1

    def forget(self, channel: str) -> None:
        """Drop what is known of ``channel`` (unsubscribed, or its losses already reported)."""
        self._last.pop(channel, None)

    def clear(self) -> None:
        """Forget everything."""
        self._last.clear()
