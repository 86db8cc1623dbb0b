"""Codec micro-benchmarks: decode and encode of the chat and topic envelopes.

Contenders, each doing what an application would write with it:

- ``rtkit``: ``codec_for(inbound).decoder("json")(text)`` (the decode the endpoint runs on each
  frame, typed and validated), and ``encode(Struct(...))``;
- ``json``: stdlib ``json.loads`` plus the dict accesses and type checks a handler needs, and
  ``json.dumps`` of a dict built for the message;
- ``pydantic``: ``Model.model_validate_json`` of an equivalent model, and
  ``Model(...).model_dump_json()``.

Encoding includes building the message object, since a handler always does both.
"""

from __future__ import annotations

import functools
import gc
import json
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
import pydantic

from benchmarks._results import Measurement, Section, add_ratio, merge_samples
from benchmarks.settings import Settings
from rtkit.codec import codec_for, encode
from rtkit.messages import ChatInbound, Event, Message, Publish, Say, TopicInbound

__all__ = ["run"]

CONTENDERS = ("rtkit", "json", "pydantic")
DECODE_TARGET_VS_PYDANTIC = 5.0
INBOUND = ("Say", "Publish")
"""What a server decodes (the target applies to these); Message and Event are what it encodes,
decoded here for the record (a Python client would)."""

_TEXT = "hello everyone, this is a chat line of a fairly typical length"
_DATA: dict[str, Any] = {"bid": 1.0842, "ask": 1.0844, "seq": 123456}

# One wire sample per envelope, roughly 100 bytes each as in DESIGN.md's figures.
SAMPLES: dict[str, str] = {
    "Say": json.dumps({"type": "say", "text": _TEXT, "ref": 17}, separators=(",", ":")),
    "Publish": json.dumps(
        {"type": "publish", "topic": "prices.eurusd", "data": _DATA, "ref": "a1"}, separators=(",", ":")
    ),
    "Message": json.dumps(
        {"type": "message", "room": "lobby", "user": "alice", "text": _TEXT, "ts": 1700000000.125},
        separators=(",", ":"),
    ),
    "Event": json.dumps({"type": "event", "topic": "prices.eurusd", "data": _DATA}, separators=(",", ":")),
}


# -- the pydantic equivalents (bench-only dependency) ------------------------------------------


class PSay(pydantic.BaseModel):
    type: Literal["say"] = "say"
    text: str
    ref: str | int | None = None


class PPublish(pydantic.BaseModel):
    type: Literal["publish"] = "publish"
    topic: str
    data: Any = None
    ref: str | int | None = None


class PMessage(pydantic.BaseModel):
    type: Literal["message"] = "message"
    room: str
    user: str
    text: str
    ts: float
    ref: str | int | None = None


class PEvent(pydantic.BaseModel):
    type: Literal["event"] = "event"
    topic: str
    data: Any
    ref: str | int | None = None


# -- stdlib json with the checks a handler would make ------------------------------------------


def _field(d: dict[str, Any], key: str, kind: type) -> Any:
    value = d[key]
    if not isinstance(value, kind):
        raise TypeError(f"{key} must be {kind.__name__}")
    return value


def _json_say(s: str) -> Any:
    d = json.loads(s)
    if d["type"] != "say":
        raise ValueError("not a say")
    return _field(d, "text", str), d.get("ref")


def _json_publish(s: str) -> Any:
    d = json.loads(s)
    if d["type"] != "publish":
        raise ValueError("not a publish")
    return _field(d, "topic", str), d.get("data"), d.get("ref")


def _json_message(s: str) -> Any:
    d = json.loads(s)
    if d["type"] != "message":
        raise ValueError("not a message")
    return _field(d, "room", str), _field(d, "user", str), _field(d, "text", str), _field(d, "ts", float)


def _json_event(s: str) -> Any:
    d = json.loads(s)
    if d["type"] != "event":
        raise ValueError("not an event")
    return _field(d, "topic", str), d["data"]


def _dumps(d: dict[str, Any]) -> str:
    return json.dumps(d, separators=(",", ":"))


def decoders() -> dict[str, dict[str, Callable[[str], Any]]]:
    """Per envelope, the decode function of each contender."""
    return {
        "Say": {
            "rtkit": codec_for(ChatInbound).decoder("json"),
            "json": _json_say,
            "pydantic": PSay.model_validate_json,
        },
        "Publish": {
            "rtkit": codec_for(TopicInbound).decoder("json"),
            "json": _json_publish,
            "pydantic": PPublish.model_validate_json,
        },
        "Message": {
            "rtkit": codec_for(Message).decoder("json"),
            "json": _json_message,
            "pydantic": PMessage.model_validate_json,
        },
        "Event": {
            "rtkit": codec_for(Event).decoder("json"),
            "json": _json_event,
            "pydantic": PEvent.model_validate_json,
        },
    }


def encoders() -> dict[str, dict[str, Callable[[], Any]]]:
    """Per envelope, a function that builds the message and serializes it, per contender."""
    ts = 1700000000.125
    return {
        "Say": {
            "rtkit": lambda: encode(Say(text=_TEXT, ref=17)),
            "json": lambda: _dumps({"type": "say", "text": _TEXT, "ref": 17}),
            "pydantic": lambda: PSay(text=_TEXT, ref=17).model_dump_json(exclude_none=True),
        },
        "Publish": {
            # A client hands the data over as JSON it encodes itself (Publish keeps it raw).
            "rtkit": lambda: encode(
                Publish(topic="prices.eurusd", data=msgspec.Raw(encode(_DATA)), ref="a1")
            ),
            "json": lambda: _dumps({"type": "publish", "topic": "prices.eurusd", "data": _DATA, "ref": "a1"}),
            "pydantic": lambda: PPublish(topic="prices.eurusd", data=_DATA, ref="a1").model_dump_json(),
        },
        "Message": {
            "rtkit": lambda: encode(Message(room="lobby", user="alice", text=_TEXT, ts=ts)),
            "json": lambda: _dumps(
                {"type": "message", "room": "lobby", "user": "alice", "text": _TEXT, "ts": ts}
            ),
            "pydantic": lambda: PMessage(room="lobby", user="alice", text=_TEXT, ts=ts).model_dump_json(
                exclude_none=True
            ),
        },
        "Event": {
            "rtkit": lambda: encode(Event(topic="prices.eurusd", data=_DATA)),
            "json": lambda: _dumps({"type": "event", "topic": "prices.eurusd", "data": _DATA}),
            "pydantic": lambda: PEvent(topic="prices.eurusd", data=_DATA).model_dump_json(exclude_none=True),
        },
    }


_BATCHES = 10
"""Each timing is split into this many batches, and the fastest batch counts (see ``_best_of``)."""


def _best_of(batch: Callable[[int], int], iterations: int) -> float:
    """Nanoseconds per call of the fastest of ``_BATCHES`` batches of ``iterations`` calls in all.

    Noise only ever adds time: a burst of the host's (a virtual CPU descheduled for a few
    milliseconds) that lands in one contender's loop would be charged to it alone. The fastest
    batch is the one the burst missed, for every contender alike.
    """
    per_batch = max(1, iterations // _BATCHES)
    return min(batch(per_batch) for _ in range(_BATCHES)) / per_batch


def _ns_per_call(fn: Callable[[], Any], iterations: int) -> float:
    # The loop's own cost is the same for every contender, so it cancels out of the ratios.
    def batch(count: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(count):
            fn()
        return time.perf_counter_ns() - start

    return _best_of(batch, iterations)


def _ns_per_decode(fn: Callable[[str], Any], data: str, iterations: int) -> float:
    def batch(count: int) -> int:
        start = time.perf_counter_ns()
        for _ in range(count):
            fn(data)
        return time.perf_counter_ns() - start

    return _best_of(batch, iterations)


def _check_equivalent() -> None:
    """Each contender must read the same values, or the comparison would be meaningless."""
    for name, dfns in decoders().items():
        for contender, dfn in dfns.items():
            if dfn(SAMPLES[name]) is None:
                raise RuntimeError(f"{contender} decoded nothing from {name}")
    for name, efns in encoders().items():
        shapes = {contender: json.loads(efn()) for contender, efn in efns.items()}
        if len({json.dumps(s, sort_keys=True) for s in shapes.values()}) != 1:
            raise RuntimeError(f"the encoders of {name} disagree: {shapes}")


def run(settings: Settings) -> Section:
    """Time each contender; medians over ``codec_repeats``, interleaved to share the noise."""
    _check_equivalent()
    section = Section(
        name="codec",
        title="Codec: decode and encode of the envelopes",
        description=(
            "Nanoseconds per message (build + serialize for encode), one thread, warm caches; "
            f"each repeat's figure is the fastest of {_BATCHES} batches."
        ),
        metric_units={"ns_per_msg": "ns"},
        lower_is_better=["ns_per_msg"],
    )
    n = settings.codec_iterations
    plan: list[tuple[str, str, str, Callable[[], float]]] = []
    for name, dfns in decoders().items():
        for contender, dfn in dfns.items():
            plan.append(("decode", name, contender, functools.partial(_ns_per_decode, dfn, SAMPLES[name], n)))
    for name, efns in encoders().items():
        for contender, efn in efns.items():
            plan.append(("encode", name, contender, functools.partial(_ns_per_call, efn, n)))
    results: dict[tuple[str, str, str], list[dict[str, float]]] = {}
    gc_was_enabled = gc.isenabled()
    gc.disable()  # a collection landing in one contender's loop would be charged to it alone
    try:
        for task in plan:  # warm-up: first calls build caches (pydantic's, the lru_cache)
            task[3]()
        for _ in range(settings.codec_repeats):
            for case, name, contender, timed in plan:
                results.setdefault((case, name, contender), []).append({"ns_per_msg": timed()})
    finally:
        if gc_was_enabled:
            gc.enable()
    for (case, name, contender), repeats in results.items():
        metrics, samples = merge_samples(repeats)
        section.measurements.append(
            Measurement(case=case, param=name, contender=contender, metrics=metrics, samples=samples)
        )
    for case in ("decode", "encode"):
        for name in SAMPLES:
            target = DECODE_TARGET_VS_PYDANTIC if case == "decode" and name in INBOUND else None
            add_ratio(section, case=case, param=name, metric="ns_per_msg", baseline="pydantic", target=target)
            add_ratio(section, case=case, param=name, metric="ns_per_msg", baseline="json")
    section.notes.append(
        "Decode takes the text frame as str (what uvicorn hands the app); rtkit decodes to the "
        "endpoint's inbound type (a tagged union for topics)."
    )
    return section
