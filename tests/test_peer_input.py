"""Odd and hostile peer input, driven through a scripted ASGI peer on asyncio and trio.

Deeply nested frames, refusals that are or are not in a row, the byte accounting of echoed
text, and a client that waits quietly while a handler works.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from starlette.websockets import WebSocket

from rtkit import EchoEndpoint, Limits, RealtimeEndpoint
from rtkit._types import Message
from tests.asgi import websocket_scope

pytestmark = pytest.mark.anyio

# Nested far deeper than the interpreter's recursion limit, yet only 6 KB: well within size.
DEEP = "[" * 3000 + "]" * 3000


class Add(msgspec.Struct, tag="add", kw_only=True):
    a: int
    b: int
    ref: str | int | None = None


class Adder(RealtimeEndpoint):
    inbound = Add
    limits = Limits(rate=None)

    async def on_add(self, websocket: WebSocket, message: Add) -> None:
        self.queue_message({"type": "sum", "value": message.a + message.b, "ref": message.ref})


class ScarceAdder(Adder):
    """One token, and practically no refill: the test decides when a token comes."""

    limits = Limits(rate=0.001, burst=1, max_rate_violations=3)


class Peer:
    """Plays the client: hands the endpoint ``incoming`` one by one, then disconnects, and
    keeps what the endpoint sends. ``before[i]`` runs just before frame ``i`` is handed over."""

    def __init__(
        self,
        incoming: list[str | bytes],
        *,
        before: dict[int, Callable[[], None]] | None = None,
        then_wait: bool = False,
    ) -> None:
        self.incoming = incoming
        self.before = before or {}
        self.then_wait = then_wait
        self.sent: list[Message] = []
        self.index = -1

    async def receive(self) -> Message:
        if self.index < 0:
            self.index = 0
            return {"type": "websocket.connect"}
        if self.index < len(self.incoming):
            index, self.index = self.index, self.index + 1
            if index in self.before:
                self.before[index]()
            frame = self.incoming[index]
            key = "text" if isinstance(frame, str) else "bytes"
            return {"type": "websocket.receive", key: frame}
        if self.then_wait:
            await anyio.sleep_forever()
        return {"type": "websocket.disconnect", "code": 1000}

    async def send(self, message: Message) -> None:
        self.sent.append(message)

    def replies(self) -> list[Any]:
        out: list[Any] = []
        for message in self.sent:
            if message["type"] == "websocket.send":
                text = message.get("text")
                out.append(
                    msgspec.json.decode(text)
                    if text is not None
                    else msgspec.msgpack.decode(message["bytes"])
                )
            elif message["type"] == "websocket.close":
                out.append(("close", message.get("code")))
        return out


def _codes(replies: list[Any]) -> list[Any]:
    return [r.get("code", r.get("type")) if isinstance(r, dict) else r for r in replies]


async def _serve(
    endpoint_class: type[RealtimeEndpoint], peer: Peer, scope: dict[str, Any] | None = None
) -> None:
    with anyio.fail_after(10):
        await endpoint_class(scope or websocket_scope("/"), peer.receive, peer.send)


async def test_a_deeply_nested_json_frame_is_invalid_input_not_a_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    peer = Peer([f'{{"type":"add","a":1,"b":2,"x":{DEEP},"ref":1}}', '{"type":"add","a":1,"b":2}'])
    with caplog.at_level(logging.WARNING):
        await _serve(Adder, peer)
    replies = peer.replies()
    assert _codes(replies) == ["invalid_message", "sum"]  # the socket stayed open
    assert "ref" not in replies[0]  # the probe cannot read it either, and says nothing
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_deeply_nested_messagepack_frame_is_invalid_input_not_a_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # {"type": "add", "a": 1, "b": 2, "x": [[[...1...]]]}, built by hand (encoding it would
    # hit the recursion limit on this side first).
    head = msgspec.msgpack.encode({"type": "add", "a": 1, "b": 2})
    frame = bytes([head[0] + 1]) + head[1:] + msgspec.msgpack.encode("x") + b"\x91" * 3000 + b"\x01"
    peer = Peer([frame, msgspec.msgpack.encode({"type": "add", "a": 2, "b": 2})])
    scope = {**websocket_scope("/"), "subprotocols": ["rtkit.msgpack"]}
    with caplog.at_level(logging.WARNING):
        await _serve(Adder, peer, scope)
    assert _codes(peer.replies()) == ["invalid_message", "sum"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_a_deeply_nested_frame_over_the_rate_gets_rate_limited(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # The refusal reads the frame's ref with a probe: that probe must survive the nesting too.
    peer = Peer(['{"type":"add","a":1,"b":2}', f'{{"x":{DEEP}}}'])
    with caplog.at_level(logging.WARNING):
        await _serve(ScarceAdder, peer)
    assert _codes(peer.replies()) == ["sum", "rate_limited"]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]


async def test_echoed_text_is_charged_in_bytes_against_the_outbox() -> None:
    text = "\U0001f600" * 10  # ten characters, forty bytes of UTF-8
    charged: list[int] = []

    class Charged(EchoEndpoint):
        def _queue(self, event: dict[str, Any], size: int) -> bool:
            charged.append(size)
            return super()._queue(event, size)

    peer = Peer([text, b"\x00\x01"])
    await _serve(Charged, peer)
    assert charged == [40, 2]
    assert [m.get("text", m.get("bytes")) for m in peer.sent if m["type"] == "websocket.send"] == [
        text,
        b"\x00\x01",
    ]


class Work(msgspec.Struct, tag="work"):
    seconds: float


class SlowWorker(RealtimeEndpoint):
    inbound = Work
    limits = Limits(rate=None, idle_timeout=0.3)
    finished: ClassVar[list[float]] = []

    async def on_work(self, websocket: WebSocket, message: Work) -> None:
        await anyio.sleep(message.seconds)  # the work itself takes this long
        self.finished.append(anyio.current_time())
        self.queue_message({"type": "done"})


async def test_a_client_waiting_for_a_slow_handler_is_not_idle() -> None:
    # The handler works for 1 s, more than three idle timeouts, while the client waits quietly
    # for its answer: it gets the answer, and only then, once idle, the 1001.
    SlowWorker.finished.clear()
    peer = Peer(['{"type":"work","seconds":1.0}'], then_wait=True)
    await _serve(SlowWorker, peer)
    assert peer.replies() == [{"type": "done"}, ("close", 1001)]
    assert len(SlowWorker.finished) == 1


class Step(msgspec.Struct, tag="step"):
    pass


class Progress(RealtimeEndpoint):
    """Reports that it started, then waits for the client to have seen that, then finishes."""

    inbound = Step
    limits = Limits(rate=None)
    seen_started: ClassVar[anyio.Event]

    async def on_step(self, websocket: WebSocket, message: Step) -> None:
        self.queue_message({"type": "started"})
        await self.seen_started.wait()  # only the frame above, sent already, can end this
        self.queue_message({"type": "done"})


async def test_a_frame_a_handler_sends_goes_out_before_the_handler_returns() -> None:
    # On trio (no eager send) the writer task sends: a handler that reports progress and then
    # awaits must not have its frames held until it returns.
    Progress.seen_started = anyio.Event()
    seen_done = anyio.Event()

    class Watching(Peer):
        async def send(self, message: Message) -> None:
            await super().send(message)
            if message.get("text") == '{"type":"started"}':
                Progress.seen_started.set()
            elif message.get("text") == '{"type":"done"}':
                seen_done.set()

    peer = Watching(['{"type":"step"}'], then_wait=True)
    with anyio.move_on_after(10) as scope:
        async with anyio.create_task_group() as tg:
            tg.start_soon(_serve, Progress, peer)
            await seen_done.wait()
            tg.cancel_scope.cancel()
    assert not scope.cancelled_caught, "the handler's first frame was held until it returned"
    assert peer.replies() == [{"type": "started"}, {"type": "done"}]
