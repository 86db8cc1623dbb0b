"""The frame guard as pure code: frames and times in, verdicts out; no socket, no clock.

What needs a socket (the answers reaching a real client, a close frame going out) stays in
``test_guards.py`` and ``test_peer_input.py``.
"""

from __future__ import annotations

from typing import Any

import msgspec
import pytest

from rtkit.codec import codec_for
from rtkit.limits import Limits
from rtkit.session.guard import REFUSED, Close, FrameGuard, Reply
from rtkit.status import CloseCode, ErrorCode


class Add(msgspec.Struct, tag="add", kw_only=True):
    a: int
    b: int
    ref: str | int | None = None


def text(value: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": value}


def binary(value: bytes) -> dict[str, Any]:
    return {"type": "websocket.receive", "bytes": value}


def refusal_of(checked: FrameGuard) -> Reply | Close | None:
    """The guard's last refusal, as its declared type (each check may change it)."""
    return checked.refusal


def guard(limits: Limits, *, wire: Any = "json", raw: bool = False) -> FrameGuard:
    decode = None if raw else codec_for(Add).decoder(wire)
    return FrameGuard(limits, wire, decode, now=0.0)


VALID = '{"type":"add","a":1,"b":2}'
NO_RATE = Limits(rate=None)


def test_a_valid_frame_is_decoded_to_its_type() -> None:
    assert guard(NO_RATE).check(text(VALID), 0.0) == Add(a=1, b=2)


@pytest.mark.parametrize("padding", [0, 100], ids=["quick path", "general path"])
def test_an_undecodable_frame_gets_an_error_frame_with_its_ref(padding: int) -> None:
    checked = guard(Limits(rate=None, max_message_bytes=200))
    frame = '{"type":"add","a":"x","ref":7}' + " " * padding
    assert checked.check(text(frame), 0.0) is REFUSED
    assert checked.refusal == Reply(ErrorCode.INVALID_MESSAGE, "Expected `int`, got `str` - at `$.a`", 7)


def test_too_many_invalid_frames_in_a_row_close_1008_and_a_valid_one_resets_the_run() -> None:
    checked = guard(Limits(rate=None, max_invalid_frames=3))
    for _ in range(2):
        assert checked.check(text("{"), 0.0) is REFUSED
        assert isinstance(checked.refusal, Reply)
    assert checked.check(text(VALID), 0.0) == Add(a=1, b=2)  # the run is over
    assert checked.check(text("{"), 0.0) is REFUSED
    assert isinstance(checked.refusal, Reply)
    checked.check(text("{"), 0.0)
    checked.check(text("{"), 0.0)
    assert refusal_of(checked) == Close(CloseCode.POLICY_VIOLATION, "too many invalid frames")


def test_a_heartbeat_is_refused_without_an_answer_and_is_no_invalid_frame() -> None:
    checked = guard(Limits(rate=None, max_invalid_frames=2))
    for _ in range(5):
        assert checked.check(text('{"type":"heartbeat"}'), 0.0) is REFUSED
        assert checked.refusal is None
    assert checked.check(text("{"), 0.0) is REFUSED
    assert isinstance(checked.refusal, Reply)  # the first invalid frame, not the sixth


@pytest.mark.parametrize("wire", ["json", "msgpack"])
def test_a_frame_of_the_other_kind_is_invalid(wire: Any) -> None:
    checked = guard(NO_RATE, wire=wire)
    as_msgpack = binary(msgspec.msgpack.encode({"type": "add", "a": 1, "b": 2}))
    assert checked.check(as_msgpack if wire == "json" else text(VALID), 0.0) is REFUSED
    expected = "text (JSON)" if wire == "json" else "binary (MessagePack)"
    detail = f"expected {expected} frames on this connection"
    assert checked.refusal == Reply(ErrorCode.INVALID_MESSAGE, detail, None)


def test_msgpack_frames_decode_on_a_msgpack_connection() -> None:
    frame = msgspec.msgpack.encode({"type": "add", "a": 2, "b": 3})
    assert guard(NO_RATE, wire="msgpack").check(binary(frame), 0.0) == Add(a=2, b=3)


def test_a_frame_over_the_size_limit_closes_1009_counting_bytes_not_characters() -> None:
    checked = guard(Limits(rate=None, max_message_bytes=40))
    ten_emoji = '{"type":"add","a":1,"b":2}' + "\U0001f600" * 3  # 26 + 12 bytes: within
    assert checked.check(text(ten_emoji), 0.0) is REFUSED  # decoded, and invalid: trailing data
    assert isinstance(checked.refusal, Reply)
    over = '{"type":"add","a":1,"b":2}' + "\U0001f600" * 4  # 26 + 16 bytes
    assert checked.check(text(over), 0.0) is REFUSED
    assert refusal_of(checked) == Close(CloseCode.MESSAGE_TOO_BIG, "message over 40 bytes")
    assert guard(Limits(rate=None, max_message_bytes=4), raw=True).check(binary(b"12345"), 0.0) is REFUSED


def test_over_the_rate_gets_an_error_frame_and_a_run_of_them_closes_1008() -> None:
    checked = guard(Limits(rate=1.0, burst=2, max_rate_violations=3))
    assert checked.check(text(VALID), 0.0) == Add(a=1, b=2)
    assert checked.check(text(VALID), 0.0) == Add(a=1, b=2)
    with_ref = '{"type":"add","a":1,"b":2,"ref":"r"}'
    assert checked.check(text(with_ref), 0.0) is REFUSED
    assert checked.refusal == Reply(ErrorCode.RATE_LIMITED, "over 1 messages per second", "r")
    assert checked.check(text(VALID), 0.5) is REFUSED
    assert checked.check(text(VALID), 0.6) is REFUSED
    assert refusal_of(checked) == Close(CloseCode.POLICY_VIOLATION, "rate limit exceeded")


@pytest.mark.parametrize("padding", [0, 100], ids=["quick path", "general path"])
def test_an_admitted_frame_ends_a_run_of_rate_refusals_whatever_its_length(padding: int) -> None:
    # The quick path and the general one count refusals "in a row" alike, and a frame that is
    # admitted and then fails to decode still ends the run.
    checked = guard(Limits(rate=1.0, burst=1, max_rate_violations=3, max_message_bytes=400))
    pad = " " * padding
    invalid, valid = "{" + pad, VALID + pad
    answers = []
    for frame, now in ((invalid, 0.0), (valid, 0.1), (valid, 0.2), (invalid, 1.2), (valid, 1.3)):
        assert checked.check(text(frame), now) is REFUSED
        assert checked.refusal is not None
        answers.append(checked.refusal.code)
    assert answers == [
        ErrorCode.INVALID_MESSAGE,  # admitted (the bucket's one token), undecodable
        ErrorCode.RATE_LIMITED,
        ErrorCode.RATE_LIMITED,
        ErrorCode.INVALID_MESSAGE,  # a second later, a token again: the run is over
        ErrorCode.RATE_LIMITED,  # the first of a new run, not the third in a row (a close)
    ]


def test_without_an_inbound_type_frames_pass_raw_within_size_and_rate() -> None:
    checked = guard(Limits(rate=1.0, burst=1, max_message_bytes=10), raw=True)
    assert checked.check(text("not json"), 0.0) == "not json"
    assert checked.check(binary(b"x"), 0.0) is REFUSED
    assert isinstance(checked.refusal, Reply)
    assert checked.refusal.code == ErrorCode.RATE_LIMITED
    assert checked.check(binary(b"bytes"), 1.0) == b"bytes"


def test_a_frame_nested_too_deep_to_decode_is_an_invalid_frame() -> None:
    checked = guard(Limits(rate=None, max_message_bytes=1 << 20))
    assert checked.check(text("[" * 100_000 + "]" * 100_000), 0.0) is REFUSED
    assert isinstance(checked.refusal, Reply)
    assert checked.refusal.code == ErrorCode.INVALID_MESSAGE
