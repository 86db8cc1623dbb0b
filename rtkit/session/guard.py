"""What one received frame gets: its decoded value, an error frame, or a close. Pure code.

``FrameGuard.check(message, now)`` applies, in order, the size limit (close 1009), the rate
limit (error frame ``rate_limited``; close 1008 after ``max_rate_violations`` refusals in a
row), and decoding to the endpoint's ``inbound`` type (error frame ``invalid_message``; close
1008 after ``max_invalid_frames`` in a row). It returns the decoded message, or ``REFUSED``
with the answer in ``refusal``: the receive loop sends the error frame or starts the close.
It reads the clock only through ``now`` and touches no socket, so tests feed it frames and
times, the way websockets tests its sans-I/O protocol.

The check is one synchronous call per frame: a JSON text frame short enough that it cannot
break the size limit (the common case) is rate-checked and decoded in a few lines; anything
else takes the general path, with the same answers.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Final, NamedTuple

import msgspec

from rtkit._types import Message
from rtkit.codec import Codec, WireFormat
from rtkit.limits import Limits, TokenBucket
from rtkit.messages import Ref
from rtkit.status import CloseCode, ErrorCode

__all__ = ["REFUSED", "Close", "FrameGuard", "Reply"]

REFUSED: Final = object()
"""What ``check`` returns for a frame that is not to be handled; ``refusal`` says why."""

# What decoding a peer's frame may raise: a frame nested deeper than the interpreter's
# recursion limit (a few kilobytes of brackets) is bad input like any other.
_UNDECODABLE = (msgspec.DecodeError, RecursionError)


class Reply(NamedTuple):
    """Answer with an error frame; the connection stays open."""

    code: ErrorCode
    detail: str
    ref: Ref


class Close(NamedTuple):
    """Close the connection (after what is already queued for it)."""

    code: CloseCode
    reason: str


class FrameGuard:
    """The checks of a connection's received frames, with what they remember between frames.

    Args:
        limits: the connection's limits (size, rate, invalid frames).
        wire: the connection's wire format: text frames carry JSON, binary ones MessagePack.
        decode: the decoder of the endpoint's ``inbound`` type for that wire, or None to hand
            handlers the raw ``str`` or ``bytes``.
        now: the time the connection starts (its rate bucket starts full).
    """

    __slots__ = (
        "_bucket",
        "_decode",
        "_invalid_in_row",
        "_limited_in_row",
        "_limits",
        "_quick_chars",
        "_wire",
        "refusal",
    )

    def __init__(
        self, limits: Limits, wire: WireFormat, decode: Callable[[Any], Any] | None, *, now: float
    ) -> None:
        self._limits = limits
        self._wire = wire
        self._decode = decode
        rate = limits.rate
        self._bucket = TokenBucket(rate, limits.burst, now=now) if rate is not None else None
        self._invalid_in_row = 0
        self._limited_in_row = 0
        # A JSON text frame of at most this many characters is within max_message_bytes
        # whatever it holds (UTF-8 takes at most 4 bytes a character): the quick path.
        self._quick_chars = limits.max_message_bytes // 4 if decode is not None and wire == "json" else -1
        self.refusal: Reply | Close | None = None
        """The answer to the last frame refused; None for one refused without an answer (a
        heartbeat: a sign of life, not a message)."""

    def check(self, message: Message, now: float) -> Any:
        """The decoded value of a ``websocket.receive`` message, or ``REFUSED``."""
        text = message.get("text")
        if text is not None and len(text) <= self._quick_chars:
            bucket = self._bucket
            if bucket is not None:
                if not bucket.take(now):
                    return self._over_rate(text)
                self._limited_in_row = 0  # admitted: refusals are no longer in a row
            try:
                data = self._decode(text)  # type: ignore[misc]  # quick_chars < 0 without one
            except _UNDECODABLE as exc:
                return self._undecodable(text, exc)
            self._invalid_in_row = 0
            return data
        return self._check_any(message, text, now)

    def _check_any(self, message: Message, text: str | None, now: float) -> Any:
        raw: str | bytes | None = text if text is not None else message.get("bytes")
        limit = self._limits.max_message_bytes
        # len() counts characters: only a text of more than limit/4 of them can be over it.
        if raw is not None and len(raw) * (4 if text is not None else 1) > limit:
            size = len(raw.encode()) if isinstance(raw, str) else len(raw)
            if size > limit:
                return self._refuse(Close(CloseCode.MESSAGE_TOO_BIG, f"message over {limit} bytes"))
        bucket = self._bucket
        if bucket is not None:
            if not bucket.take(now):
                return self._over_rate(raw)
            self._limited_in_row = 0
        decode = self._decode
        if decode is None:
            return raw
        wire = self._wire
        if raw is None or (text is None) == (wire == "json"):
            expected = "text (JSON)" if wire == "json" else "binary (MessagePack)"
            ref = Codec.probe(raw, wire)[1] if raw is not None else None
            return self._invalid(f"expected {expected} frames on this connection", ref)
        try:
            data = decode(raw)
        except _UNDECODABLE as exc:
            return self._undecodable(raw, exc)
        self._invalid_in_row = 0
        return data

    def _refuse(self, refusal: Reply | Close | None) -> object:
        self.refusal = refusal
        return REFUSED

    def _over_rate(self, raw: str | bytes | None) -> object:
        """A frame over the rate: an error frame, or a close after too many in a row.

        The error frame carries the frame's ``ref``, read by a probe: a refused frame is not
        decoded, but its sender still matches replies by ref.
        """
        self._limited_in_row += 1
        if self._limited_in_row >= self._limits.max_rate_violations:
            return self._refuse(Close(CloseCode.POLICY_VIOLATION, "rate limit exceeded"))
        ref = Codec.probe(raw, self._wire)[1] if raw is not None else None
        bucket = self._bucket
        rate = bucket.rate if bucket is not None else 0.0
        return self._refuse(Reply(ErrorCode.RATE_LIMITED, f"over {rate:g} messages per second", ref))

    def _undecodable(self, raw: str | bytes, exc: Exception) -> object:
        """A frame the decoder refused: an error frame, unless it is a heartbeat."""
        kind, ref = Codec.probe(raw, self._wire)
        if kind == "heartbeat":  # a sign of life: it reset the idle timer, and needs no answer
            return self._refuse(None)
        return self._invalid(str(exc), ref)

    def _invalid(self, detail: str, ref: Ref) -> object:
        self._invalid_in_row += 1
        if self._invalid_in_row >= self._limits.max_invalid_frames:
            return self._refuse(Close(CloseCode.POLICY_VIOLATION, "too many invalid frames"))
        return self._refuse(Reply(ErrorCode.INVALID_MESSAGE, detail, ref))
