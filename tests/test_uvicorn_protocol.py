"""``FastWebSocketProtocol`` against uvicorn's own ``websockets-sansio`` protocol.

The differential tests feed both protocols the same bytes, cut into the same pieces, and
require the same result: the same messages queued for the app, the same bytes written back,
the same close. The live tests run real clients against it over loopback.
"""

from __future__ import annotations

import asyncio
import os
import random
import struct
import sys
import threading
from collections import deque
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import pytest
import uvicorn
import websockets.version
from uvicorn.protocols.utils import ClientDisconnected
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
from uvicorn.server import ServerState
from websockets.asyncio.client import connect

from rtkit import uvicorn_protocol
from rtkit._passthrough import write_now_of
from rtkit.testing import LiveServer
from rtkit.uvicorn_protocol import FastWebSocketProtocol
from tests.live import TIMEOUT, RawClient

pytestmark = pytest.mark.anyio

MAX_SIZE = 70_000
HANDSHAKE = (
    b"GET /ws HTTP/1.1\r\nHost: test\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
    b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
)


@pytest.fixture
def anyio_backend() -> str:
    """uvicorn's protocols and the `websockets` client run on asyncio only."""
    return "asyncio"


class FakeTransport:
    """What the protocols write, and whether they paused, resumed or closed."""

    def __init__(self) -> None:
        self.written = bytearray()
        self.paused = False
        self.pauses = 0
        self.closed = False

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(name, default)

    def write(self, data: bytes) -> None:
        self.written += data

    def pause_reading(self) -> None:
        self.paused = True
        self.pauses += 1

    def resume_reading(self) -> None:
        self.paused = False

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.closed = True


class Driven:
    """One protocol instance, driven by the test instead of a socket and an app."""

    def __init__(self, cls: type[WebSocketsSansIOProtocol], app_done: asyncio.Event) -> None:
        async def app(scope: Any, receive: Any, send: Any) -> None:
            await app_done.wait()

        config = uvicorn.Config(app, ws_max_size=MAX_SIZE, ws_ping_interval=None, log_level="critical")
        config.load()
        self.protocol: Any = cls(config, ServerState(), {})  # driven with plain dicts
        self.transport = FakeTransport()
        self.protocol.connection_made(self.transport)  # type: ignore[arg-type]

    async def open(self) -> None:
        self.protocol.data_received(HANDSHAKE)
        await self.protocol.send({"type": "websocket.accept"})
        assert self.drain() == [{"type": "websocket.connect"}]
        self.transport.written.clear()

    def feed(self, pieces: list[bytes]) -> None:
        for piece in pieces:
            if self.transport.closed:
                return
            self.protocol.data_received(piece)

    def drain(self) -> list[Any]:
        events = []
        while not self.protocol.queue.empty():
            events.append(self.protocol.queue.get_nowait())
        return events

    def outcome(self) -> tuple[list[Any], bytes, bool, bool]:
        return self.drain(), bytes(self.transport.written), self.transport.closed, self.protocol.read_paused


def client_frame(
    payload: bytes,
    opcode: int = 0x1,
    *,
    fin: bool = True,
    rsv: int = 0,
    mask: bool = True,
    key: bytes | None = None,
) -> bytes:
    """A frame as a client sends it (masked, unless a test says otherwise)."""
    first = (0x80 if fin else 0) | rsv | opcode
    length = len(payload)
    flag = 0x80 if mask else 0
    if length < 126:
        header = struct.pack("!BB", first, flag | length)
    elif length < 1 << 16:
        header = struct.pack("!BBH", first, flag | 126, length)
    else:
        header = struct.pack("!BBQ", first, flag | 127, length)
    if not mask:
        return header + payload
    if key is None:
        key = os.urandom(4)
    return header + key + bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def random_text(rng: random.Random, size: int) -> bytes:
    alphabet = 'abcxyz 0123456789"{}:,é€😀'
    text = "".join(rng.choice(alphabet) for _ in range(size))
    return text.encode()


def random_stream(rng: random.Random) -> bytes:
    """Valid traffic: data frames of every length class, pings, pongs and fragmented messages."""

    def frame(payload: bytes, opcode: int = 0x1, *, fin: bool = True) -> bytes:
        return client_frame(payload, opcode, fin=fin, key=rng.randbytes(4))  # reproducible

    out = []
    for _ in range(rng.randint(1, 30)):
        kind = rng.random()
        size = rng.choice([0, 1, 5, 60, 125, 126, 127, 300, 65535, 65536, 69_000])
        if kind < 0.45:
            text = random_text(rng, size)[:size] if size < 2000 else b"x" * size
            # Cut on a character boundary: valid traffic is valid UTF-8.
            out.append(frame(text.decode(errors="ignore").encode()))
        elif kind < 0.7:
            out.append(frame(rng.randbytes(size), 0x2))
        elif kind < 0.8:
            out.append(frame(rng.randbytes(rng.randint(0, 125)), 0x9))
        elif kind < 0.85:
            out.append(frame(rng.randbytes(4), 0xA))
        else:
            out.append(frame(b"part one ", 0x1, fin=False))
            if rng.random() < 0.5:
                out.append(frame(b"ping inside", 0x9))
            out.append(frame(b"part two ", 0x0, fin=False))
            out.append(frame(b"end", 0x0))
    return b"".join(out)


def cut(rng: random.Random, data: bytes) -> list[bytes]:
    """``data`` in pieces: single bytes, small reads and large ones."""
    pieces = []
    pos = 0
    while pos < len(data):
        step = rng.choice([1, 2, 3, 7, 64, 1000, 70_000, len(data)])
        pieces.append(data[pos : pos + step])
        pos += step
    return pieces


async def both(pieces: list[bytes]) -> tuple[Any, Any]:
    """Feed the same pieces to uvicorn's protocol and to the fast one; their outcomes."""
    app_done = asyncio.Event()
    stock = Driven(WebSocketsSansIOProtocol, app_done)
    fast = Driven(FastWebSocketProtocol, app_done)
    for driven in (stock, fast):
        await driven.open()
        driven.feed(pieces)
    outcomes = stock.outcome(), fast.outcome()
    app_done.set()
    await asyncio.sleep(0)  # let both app tasks end
    return outcomes


def text_of(text: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": text}


@pytest.mark.parametrize("seed", range(60))
async def test_random_traffic_in_random_pieces_gives_what_uvicorn_gives(seed: int) -> None:
    rng = random.Random(seed)
    stream = random_stream(rng)
    stock, fast = await both(cut(rng, stream))
    assert fast == stock
    # bytes == bytearray would hide a change of type: the app gets the very same types.
    assert [{k: type(v) for k, v in e.items()} for e in fast[0]] == [
        {k: type(v) for k, v in e.items()} for e in stock[0]
    ]
    assert stock[0], "the stream carried messages"


@pytest.mark.parametrize(
    ("name", "bad"),
    [
        ("unmasked", client_frame(b"hello", mask=False)),
        ("reserved bit", client_frame(b"hello", rsv=0x40)),
        ("reserved opcode", client_frame(b"hello", 0x3)),
        ("invalid UTF-8", client_frame(b"caf\xc3")),
        ("oversized", client_frame(b"x" * (MAX_SIZE + 1), 0x2)),
        ("oversized header only", client_frame(b"x" * (MAX_SIZE + 1), 0x2)[:10]),
        ("close", client_frame(struct.pack("!H", 1000) + b"bye", 0x8)),
        ("continuation first", client_frame(b"lost", 0x0)),
        ("text inside a fragmented message", client_frame(b"a", fin=False) + client_frame(b"b")),
    ],
)
@pytest.mark.parametrize("piece", [1, 3, 1 << 20])
async def test_bad_frames_after_good_ones_get_uvicorns_answer(name: str, bad: bytes, piece: int) -> None:
    good = client_frame(b'{"type":"say","text":"hi"}') + client_frame(b"\x00\x01", 0x2)
    data = good + bad + client_frame(b"after")
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    stock, fast = await both(pieces)
    good_events = [text_of('{"type":"say","text":"hi"}'), {"type": "websocket.receive", "bytes": b"\x00\x01"}]
    # The same answer to the bad frame: the same bytes written (a close frame), the same close.
    assert fast[1:3] == stock[1:3]
    assert stock[2], "the connection was closed"
    # uvicorn drops the messages that came in the same read as a protocol error; the fast
    # path hands them to the app first. Otherwise the same events.
    assert fast[0] == good_events + [event for event in stock[0] if event not in good_events]
    assert fast[0][-1]["type"] == "websocket.disconnect"


@pytest.mark.parametrize("piece", [1, 3, 1 << 20])
async def test_text_that_is_not_utf8_closes_with_1007_even_with_the_peers_close_behind_it(
    piece: int,
) -> None:
    # uvicorn's own protocol raises out of data_received when the peer's close frame comes in
    # the same read as the bad text (its 1007 finds the connection closing already) and the
    # socket is aborted without a close frame. rtkit's answers 1007 either way.
    app_done = asyncio.Event()
    fast = Driven(FastWebSocketProtocol, app_done)
    await fast.open()
    data = (
        client_frame(b"fine") + client_frame(b"caf\xc3") + client_frame(struct.pack("!H", 1000) + b"bye", 0x8)
    )
    fast.feed([data[i : i + piece] for i in range(0, len(data), piece)])
    events, written, closed, _ = fast.outcome()
    app_done.set()
    await asyncio.sleep(0)  # let the app task end
    assert events == [text_of("fine"), {"type": "websocket.disconnect", "code": 1007, "reason": ""}]
    assert written == b"\x88\x02" + struct.pack("!H", 1007)  # an unmasked close frame, code 1007
    assert closed


def _looks_like_a_frame(wire: bytes, key: bytes) -> bytes:
    """The payload that, masked with ``key``, goes on the wire as ``wire``."""
    return bytes(b ^ key[i % 4] for i, b in enumerate(wire))


@pytest.mark.parametrize(
    ("name", "frame", "split"),
    [
        # A read ends right after a control frame's header, whose mask then looks like the
        # start of a masked binary frame.
        ("ping, header alone", client_frame(b"hello", 0x9, key=b"\x81\x80\x00\x00"), 2),
        ("pong, header alone", client_frame(b"\xde\xad\xbe\xef", 0xA, key=b"\x82\x84\x07\x09"), 2),
        # ... or after its header and mask, and its payload looks like a frame.
        (
            "ping, header and mask",
            client_frame(_looks_like_a_frame(b"\x82\x85abc", b"\x10 0@"), 0x9, key=b"\x10 0@"),
            6,
        ),
        ("close, header alone", client_frame(struct.pack("!H", 1000), 0x8, key=b"\x81\x82\x00\x00"), 2),
    ],
)
async def test_a_read_that_ends_inside_a_frame_of_the_general_path_is_not_taken_for_a_boundary(
    name: str, frame: bytes, split: int
) -> None:
    after = client_frame(b"next message")
    stock, fast = await both([frame[:split], frame[split:] + after])
    assert fast == stock


async def test_frames_sent_right_after_the_handshake_are_parsed_whole() -> None:
    # The handshake and a data frame's header in one read, the rest after the app accepted.
    app_done = asyncio.Event()
    outcomes = []
    for cls in (WebSocketsSansIOProtocol, FastWebSocketProtocol):
        driven = Driven(cls, app_done)
        first = client_frame(b"hello world", key=b"\x81\x85\x00\x00")
        driven.protocol.data_received(HANDSHAKE + first[:2])
        await driven.protocol.send({"type": "websocket.accept"})
        driven.drain()
        driven.feed([first[2:] + client_frame(b"late")])
        outcomes.append(driven.drain())
    assert outcomes[1] == outcomes[0] == [text_of("hello world"), text_of("late")]
    app_done.set()


@pytest.mark.parametrize(
    "message",
    [
        {"type": "websocket.send", "text": "T", "bytes": b"B"},  # both: uvicorn sends the bytes
        {"type": "websocket.send", "bytes": "a str"},
        {"type": "websocket.send", "text": b"bytes"},
    ],
)
async def test_a_send_outside_the_asgi_rules_gets_what_uvicorn_gives(message: dict[str, Any]) -> None:
    app_done = asyncio.Event()
    results: list[tuple[type[Exception] | None, bytes]] = []
    for cls in (WebSocketsSansIOProtocol, FastWebSocketProtocol):
        driven = Driven(cls, app_done)
        await driven.open()
        try:
            await driven.protocol.send(message)
        except Exception as exc:  # uvicorn's own error, whatever it is
            results.append((type(exc), bytes(driven.transport.written)))
        else:
            results.append((None, bytes(driven.transport.written)))
    assert results[1] == results[0]
    app_done.set()


async def test_the_app_is_given_whole_messages_and_reading_pauses_until_it_takes_them() -> None:
    app_done = asyncio.Event()
    fast = Driven(FastWebSocketProtocol, app_done)
    await fast.open()
    frames = client_frame(b"one") + client_frame(b"two")
    fast.feed([frames[:4]])
    assert fast.protocol.queue.empty()
    assert not fast.transport.paused
    fast.feed([frames[4:]])
    assert fast.transport.paused
    assert await fast.protocol.receive() == text_of("one")
    assert fast.transport.paused  # one message still waits
    assert await fast.protocol.receive() == text_of("two")
    assert not fast.transport.paused
    app_done.set()


@pytest.fixture
async def fast() -> AsyncIterator[Driven]:
    """rtkit's protocol, driven by the test, past the handshake."""
    app_done = asyncio.Event()
    driven = Driven(FastWebSocketProtocol, app_done)
    await driven.open()
    yield driven
    app_done.set()


async def waiting_receive(protocol: Any) -> asyncio.Task[Any]:
    """A task in the app's place, waiting in ``receive`` by the time this returns."""
    task = asyncio.create_task(protocol.receive())
    await asyncio.sleep(0)  # one step: the task is now parked on its waiter
    assert not task.done()
    return task


async def test_a_message_the_app_waits_for_is_handed_over_without_pausing_reading(fast: Driven) -> None:
    for text in ("one", "two"):
        receiving = await waiting_receive(fast.protocol)
        fast.feed([client_frame(text.encode())])
        with anyio.fail_after(TIMEOUT):
            assert await receiving == text_of(text)
    # uvicorn pauses and resumes the socket for each message; nothing waited here.
    assert fast.transport.pauses == 0
    assert not fast.transport.paused


async def test_what_comes_with_a_handed_over_message_waits_with_reading_paused(fast: Driven) -> None:
    receiving = await waiting_receive(fast.protocol)
    fast.feed([client_frame(b"one") + client_frame(b"two")])
    assert fast.transport.paused  # "two" waits for the app
    with anyio.fail_after(TIMEOUT):
        assert await receiving == text_of("one")
    assert fast.transport.paused
    assert await fast.protocol.receive() == text_of("two")
    assert not fast.transport.paused


async def test_a_message_uvicorns_parser_hands_over_resumes_the_reading_it_paused(fast: Driven) -> None:
    # A fragmented message takes uvicorn's code, which pauses reading after every message.
    receiving = await waiting_receive(fast.protocol)
    fast.feed([client_frame(b"frag", fin=False) + client_frame(b"ment", 0x0)])
    with anyio.fail_after(TIMEOUT):
        assert await receiving == text_of("fragment")
    assert not fast.transport.paused


async def test_a_receive_cancelled_after_its_message_came_leaves_it_for_the_next(fast: Driven) -> None:
    receiving = await waiting_receive(fast.protocol)
    fast.feed([client_frame(b"one")])  # handed over; the task has not run since
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    fast.feed([client_frame(b"two")])
    assert fast.drain() == [text_of("one"), text_of("two")]


async def test_receives_given_up_on_a_silent_peer_leave_nothing_behind(fast: Driven) -> None:
    # An app that polls with a timeout: each receive is cancelled before any message comes.
    for _ in range(50):
        with anyio.move_on_after(0):
            await fast.protocol.receive()
    assert len(fast.protocol.queue.waiters) == 0
    fast.feed([client_frame(b"one")])
    with anyio.fail_after(TIMEOUT):
        assert await fast.protocol.receive() == text_of("one")


async def test_a_message_that_comes_between_a_cancel_and_its_delivery_is_kept(fast: Driven) -> None:
    receiving = await waiting_receive(fast.protocol)
    receiving.cancel()  # its waiter is cancelled now; the task learns it at its next step
    fast.feed([client_frame(b"one")])  # skips the cancelled waiter
    with pytest.raises(asyncio.CancelledError):
        await receiving
    assert await fast.protocol.queue.get() == text_of("one")
    # The queue's own get, given up while it waits, leaves no waiter either.
    getting = asyncio.create_task(fast.protocol.queue.get())
    await asyncio.sleep(0)
    getting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await getting
    assert len(fast.protocol.queue.waiters) == 0


async def test_a_receive_cancelled_while_waiting_takes_nothing_from_later_messages(fast: Driven) -> None:
    receiving = await waiting_receive(fast.protocol)
    receiving.cancel()
    with pytest.raises(asyncio.CancelledError):
        await receiving
    fast.feed([client_frame(b"one")])
    assert fast.drain() == [text_of("one")]
    # The queue's own ``get`` waits the same way, for code that calls it.
    getting = asyncio.create_task(fast.protocol.queue.get())
    await asyncio.sleep(0)
    fast.feed([client_frame(b"two")])
    with anyio.fail_after(TIMEOUT):
        assert await getting == text_of("two")
    assert fast.protocol.queue.qsize() == 0
    with pytest.raises(asyncio.QueueEmpty):
        fast.protocol.queue.get_nowait()


async def test_a_trickled_frame_is_not_copied_again_for_every_byte() -> None:
    app_done = asyncio.Event()
    fast = Driven(FastWebSocketProtocol, app_done)
    await fast.open()
    frame = client_frame(b"y" * 60_000, 0x2)
    lengths = []
    for i in range(len(frame) - 1):
        fast.protocol.data_received(frame[i : i + 1])
        partial = fast.protocol._partial
        lengths.append(len(partial) if partial is not None else 0)
    # The incomplete frame only grows: one append per read.
    assert lengths[-1] == len(frame) - 1
    assert fast.protocol.queue.empty()
    fast.protocol.data_received(frame[-1:])
    assert fast.drain() == [{"type": "websocket.receive", "bytes": b"y" * 60_000}]
    app_done.set()


@pytest.mark.parametrize("size", [0, 1, 125, 126, 65535, 65536, 100_000])
@pytest.mark.parametrize("kind", ["text", "bytes"])
async def test_sent_frames_are_byte_for_byte_uvicorns(size: int, kind: str) -> None:
    app_done = asyncio.Event()
    stock = Driven(WebSocketsSansIOProtocol, app_done)
    fast = Driven(FastWebSocketProtocol, app_done)
    value: Any = ("é" * size)[:size] if kind == "text" else os.urandom(size)
    for driven in (stock, fast):
        await driven.open()
        await driven.protocol.send({"type": "websocket.send", kind: value})
    assert fast.transport.written == stock.transport.written
    app_done.set()


async def test_a_payload_sent_to_many_sockets_is_framed_once_and_a_mutable_one_never_reused() -> None:
    app_done = asyncio.Event()
    members = [Driven(FastWebSocketProtocol, app_done) for _ in range(3)]
    text = "to everyone " * 5
    for member in members:
        await member.open()
        await member.protocol.send({"type": "websocket.send", "text": text})
    assert [bytes(m.transport.written) for m in members] == [b"\x81\x3c" + text.encode()] * 3
    assert uvicorn_protocol._last[0] is text  # framed once, written three times
    buffer = bytearray(b"first")
    await members[0].protocol.send({"type": "websocket.send", "bytes": buffer})
    buffer[:] = b"again"
    await members[0].protocol.send({"type": "websocket.send", "bytes": buffer})
    assert members[0].transport.written.endswith(b"\x82\x05first\x82\x05again")
    large = "x" * (70 * 1024)
    await members[1].protocol.send({"type": "websocket.send", "text": large})
    assert uvicorn_protocol._last[0] is not large  # a large payload is not held
    assert members[1].transport.written.endswith(large.encode())
    app_done.set()


async def test_a_send_keeps_its_place_behind_bytes_the_websockets_layer_holds() -> None:
    app_done = asyncio.Event()
    stock = Driven(WebSocketsSansIOProtocol, app_done)
    fast = Driven(FastWebSocketProtocol, app_done)
    for driven in (stock, fast):
        await driven.open()
        driven.protocol.conn.writes.append(b"\x8a\x00")  # a pong not yet written out
        await driven.protocol.send({"type": "websocket.send", "text": "after"})
        await driven.protocol.send({"type": "websocket.send"})  # neither text nor bytes
    assert fast.transport.written == stock.transport.written == b"\x8a\x00\x81\x05after"
    app_done.set()


async def test_sends_after_a_close_or_a_lost_peer_behave_as_uvicorns() -> None:
    app_done = asyncio.Event()
    for cls in (WebSocketsSansIOProtocol, FastWebSocketProtocol):
        driven = Driven(cls, app_done)
        await driven.open()
        await driven.protocol.send({"type": "websocket.close", "code": 1000})
        written = bytes(driven.transport.written)
        with pytest.raises(RuntimeError, match=r"after sending 'websocket\.close'"):
            await driven.protocol.send({"type": "websocket.send", "text": "late"})
        assert driven.transport.written == written
        lost = Driven(cls, app_done)
        await lost.open()
        lost.protocol.connection_lost(None)
        with pytest.raises(ClientDisconnected):
            await lost.protocol.send({"type": "websocket.send", "text": "late"})
    app_done.set()


async def test_write_now_writes_what_send_writes_and_declines_when_send_must_decide() -> None:
    app_done = asyncio.Event()
    stock = Driven(WebSocketsSansIOProtocol, app_done)
    fast = Driven(FastWebSocketProtocol, app_done)
    for driven in (stock, fast):
        await driven.open()
    for message in ({"type": "websocket.send", "text": "hé"}, {"type": "websocket.send", "bytes": b"\x00"}):
        await stock.protocol.send(message)
        assert fast.protocol.write_now(message) is True
    assert fast.transport.written == stock.transport.written
    fast.transport.written.clear()
    declined: list[dict[str, Any]] = [
        {"type": "websocket.close", "code": 1000},
        {"type": "websocket.send"},
        {"type": "websocket.send", "bytes": "a str"},
        {"type": "websocket.send", "text": b"bytes"},
    ]
    assert [fast.protocol.write_now(message) for message in declined] == [False] * 4
    fast.protocol.writable.clear()  # the transport asked for a pause: send waits, write_now declines
    assert fast.protocol.write_now({"type": "websocket.send", "text": "later"}) is False
    fast.protocol.writable.set()
    fast.protocol.conn.writes.append(b"\x8a\x00")  # a pong waits to go out first
    assert fast.protocol.write_now({"type": "websocket.send", "text": "later"}) is False
    fast.protocol.conn.writes.clear()
    await fast.protocol.send({"type": "websocket.close", "code": 1000})
    fast.transport.written.clear()
    assert fast.protocol.write_now({"type": "websocket.send", "text": "late"}) is False
    assert fast.transport.written == b""
    unopened = Driven(FastWebSocketProtocol, app_done)
    assert unopened.protocol.write_now({"type": "websocket.send", "text": "early"}) is False
    app_done.set()


async def test_write_now_is_found_only_behind_the_protocols_own_send() -> None:
    app_done = asyncio.Event()

    class OwnSend(FastWebSocketProtocol):
        async def send(self, message: Any) -> None:  # a subclass's send must keep being called
            await super().send(message)

    class SameSend(FastWebSocketProtocol):
        pass

    fast = Driven(FastWebSocketProtocol, app_done).protocol
    assert write_now_of(fast.send) == fast.write_now
    assert write_now_of(Driven(SameSend, app_done).protocol.send) is not None
    assert write_now_of(Driven(OwnSend, app_done).protocol.send) is None
    assert write_now_of(Driven(WebSocketsSansIOProtocol, app_done).protocol.send) is None


# -- where the shortcuts are off ----------------------------------------------------------------


def fallback_warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.name == "rtkit.uvicorn_protocol" and r.levelname == "WARNING"
    ]


@pytest.fixture
def shortcuts_off(monkeypatch: pytest.MonkeyPatch) -> None:
    """A uvicorn release beyond the supported ones: every FastWebSocketProtocol made from here on
    is uvicorn's protocol, and says so once."""
    monkeypatch.setattr(uvicorn, "__version__", "0.56.0")
    monkeypatch.setattr(uvicorn_protocol, "_warned", False)


async def test_the_installed_uvicorn_and_websockets_are_supported_and_take_the_shortcuts(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A newer release than the supported ones fails here first: run this suite on it, then
    # raise the upper bound in SUPPORTED_UVICORN or SUPPORTED_WEBSOCKETS.
    fast = Driven(FastWebSocketProtocol, asyncio.Event())
    assert uvicorn_protocol._fast_path_blocked(fast.protocol) is None
    assert fast.protocol._fast
    assert type(fast.protocol.queue) is uvicorn_protocol._ReceivedMessages
    assert not fallback_warnings(caplog)


@pytest.mark.parametrize(
    ("library", "version", "supported"),
    [
        ("uvicorn", "0.35.0", False),
        ("uvicorn", "0.52.0", False),
        ("uvicorn", "0.52.1", True),
        ("uvicorn", "0.55.9", True),
        ("uvicorn", "0.56.0", False),
        ("uvicorn", "0.56.0rc1", False),
        ("uvicorn", "1.0.0", False),
        ("uvicorn", "unknown", False),
        ("websockets", "15.0.1", False),
        ("websockets", "16.0", True),
        ("websockets", "17.4", True),
        ("websockets", "18.0", False),
    ],
)
def test_only_the_releases_the_shortcuts_were_tested_with_are_supported(
    library: str, version: str, supported: bool
) -> None:
    bounds = (
        uvicorn_protocol.SUPPORTED_UVICORN if library == "uvicorn" else uvicorn_protocol.SUPPORTED_WEBSOCKETS
    )
    problem = uvicorn_protocol._outside(library, version, bounds)
    if supported:
        assert problem is None
    else:
        assert problem is not None
        assert f"{library} {version} is outside" in problem


def _parts_used() -> list[tuple[str, str]]:
    return (
        [("uvicorn attribute", name) for name in uvicorn_protocol._UVICORN_ATTRIBUTES]
        + [("uvicorn method", name) for name in uvicorn_protocol._UVICORN_METHODS]
        + [("websockets attribute", name) for name in uvicorn_protocol._WEBSOCKETS_ATTRIBUTES]
    )


@pytest.mark.parametrize(("kind", "name"), _parts_used())
async def test_without_any_one_part_it_uses_the_shortcuts_are_off_and_the_warning_names_it(
    kind: str, name: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn_protocol, "_warned", False)
    if kind == "uvicorn method":
        assert name in vars(WebSocketsSansIOProtocol)  # uvicorn's own, not asyncio's do-nothing one
        monkeypatch.delattr(WebSocketsSansIOProtocol, name)
    else:
        # As a release whose protocol (or its websockets connection) lacks the attribute.
        init = WebSocketsSansIOProtocol.__init__

        def init_without(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            owner = self if kind == "uvicorn attribute" else self.conn
            if name in vars(owner):
                delattr(owner, name)
            else:  # a method of the websockets connection's class
                defined_by = next(cls for cls in type(owner).__mro__ if name in vars(cls))
                monkeypatch.delattr(defined_by, name)

        monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", init_without)
    protocol = Driven(FastWebSocketProtocol, asyncio.Event()).protocol
    assert not protocol._fast
    assert not isinstance(getattr(protocol, "queue", None), uvicorn_protocol._ReceivedMessages)
    assert protocol.write_now({"type": "websocket.send", "text": "x"}) is False
    [warning] = fallback_warnings(caplog)
    assert repr(name) in warning
    assert "every frame takes uvicorn's path" in warning


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("writable", "writable is not an asyncio.Event"),
        ("writes", "writes is not a list"),
        ("parser", "does not say where it waits"),
        ("StreamReader.at_eof", "does not say where it waits"),
    ],
)
async def test_a_part_of_another_kind_keeps_the_shortcuts_off_too(
    change: str, named: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(uvicorn_protocol, "_warned", False)
    if change == "StreamReader.at_eof":
        monkeypatch.setattr(uvicorn_protocol, "_BETWEEN_FRAMES", None)  # as when it is gone
    else:
        init = WebSocketsSansIOProtocol.__init__

        def init_changed(self: Any, *args: Any, **kwargs: Any) -> None:
            init(self, *args, **kwargs)
            if change == "writable":
                self.writable = threading.Event()
            elif change == "writes":
                self.conn.writes = deque()
            else:
                self.conn.parser = iter(())  # no generator: nothing says where it waits

        monkeypatch.setattr(WebSocketsSansIOProtocol, "__init__", init_changed)
    protocol = Driven(FastWebSocketProtocol, asyncio.Event()).protocol
    assert not protocol._fast
    [warning] = fallback_warnings(caplog)
    assert named in warning


def test_the_check_covers_every_part_of_uvicorn_and_websockets_the_class_reads_or_overrides() -> None:
    # What FastWebSocketProtocol's methods read of ``self`` and of the websockets connection
    # (``self.conn``, or ``conn`` for short), what they call through ``super()``, and what it
    # overrides: all of it must be in the lists the check goes through.
    import ast
    import inspect

    tree = ast.parse(inspect.getsource(uvicorn_protocol))
    [cls] = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "FastWebSocketProtocol"]
    of_self: set[str] = set()
    of_conn: set[str] = set()
    of_super: set[str] = set()
    for node in ast.walk(cls):
        if not isinstance(node, ast.Attribute):
            continue
        value = node.value
        if isinstance(value, ast.Name) and value.id == "self":
            of_self.add(node.attr)
        elif (isinstance(value, ast.Name) and value.id == "conn") or (
            isinstance(value, ast.Attribute) and value.attr == "conn"
        ):
            of_conn.add(node.attr)
        elif isinstance(value, ast.Call) and isinstance(value.func, ast.Name) and value.func.id == "super":
            of_super.add(node.attr)
    overridden = {n.name for n in cls.body if isinstance(n, ast.FunctionDef | ast.AsyncFunctionDef)}
    own = {"write_now"}  # rtkit's, with the underscored names
    uvicorns = set(uvicorn_protocol._UVICORN_ATTRIBUTES) | set(uvicorn_protocol._UVICORN_METHODS)
    assert {name for name in of_self | overridden if not name.startswith("_")} - own <= uvicorns
    assert of_super - {"__init__"} <= set(uvicorn_protocol._UVICORN_METHODS)
    assert of_conn <= set(uvicorn_protocol._WEBSOCKETS_ATTRIBUTES)
    assert {"conn", "disconnected", "writable", "close_sent"} <= of_self  # the walk found them
    assert {"state", "parser", "current_size", "send_close"} <= of_conn
    assert {"data_received", "receive", "send"} <= of_super


async def test_with_the_shortcuts_off_it_answers_exactly_as_uvicorn(
    shortcuts_off: None, caplog: pytest.LogCaptureFixture
) -> None:
    app_done = asyncio.Event()
    stock = Driven(WebSocketsSansIOProtocol, app_done)
    fast = Driven(FastWebSocketProtocol, app_done)
    assert type(fast.protocol.queue) is type(stock.protocol.queue)  # uvicorn's asyncio.Queue
    for driven in (stock, fast):
        await driven.open()
    # Sending: nothing written at once, and send writes uvicorn's frames.
    assert fast.protocol.write_now({"type": "websocket.send", "text": "now"}) is False
    assert fast.transport.written == b""
    for driven in (stock, fast):
        await driven.protocol.send({"type": "websocket.send", "text": "é" * 200})
        await driven.protocol.send({"type": "websocket.send", "bytes": b"\x00\x01"})
    assert fast.transport.written == stock.transport.written
    # Receiving: uvicorn queues the message and pauses reading until the app takes it.
    for driven in (stock, fast):
        driven.feed([client_frame(b"one")])
        assert driven.transport.paused
        with anyio.fail_after(TIMEOUT):
            assert await driven.protocol.receive() == text_of("one")
        assert not driven.transport.paused
    # A protocol error: uvicorn drops the messages that came in the same read (the fast path
    # hands them to the app first); so does the protocol now.
    data = client_frame(b"two") + client_frame(b"unmasked", mask=False) + client_frame(b"three")
    stock.feed([data])
    fast.feed([data])
    outcome = fast.outcome()
    assert outcome == stock.outcome()
    assert [(event["type"], event.get("code")) for event in outcome[0]] == [("websocket.disconnect", 1002)]
    app_done.set()
    [warning] = fallback_warnings(caplog)
    assert "uvicorn 0.56.0 is outside the releases it was tested with (>=0.52.1,<0.56)" in warning


@pytest.mark.parametrize("seed", range(10))
async def test_with_the_shortcuts_off_random_traffic_gives_exactly_what_uvicorn_gives(
    seed: int, shortcuts_off: None
) -> None:
    rng = random.Random(seed)
    data = random_stream(rng) + client_frame(b"last") + client_frame(b"\xff") + client_frame(b"lost")
    stock, fast = await both(cut(rng, data))
    assert fast == stock
    assert stock[0][-1] == {"type": "websocket.disconnect", "code": 1007, "reason": ""}


# -- over real sockets --------------------------------------------------------------------------


async def echo_app(scope: Any, receive: Any, send: Any) -> None:
    """Echo every message back as it came: text as text, bytes as bytes."""
    if scope["type"] == "lifespan":
        while (message := await receive())["type"] != "lifespan.shutdown":
            await send({"type": "lifespan.startup.complete"})
        await send({"type": "lifespan.shutdown.complete"})
        return
    await receive()
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        message["type"] = "websocket.send"
        await send(message)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with LiveServer(echo_app, ws=FastWebSocketProtocol, ws_max_size=MAX_SIZE) as live:
        yield live


async def test_a_real_client_gets_every_kind_and_size_back(server: LiveServer) -> None:
    async with connect(server.ws_url("/"), max_size=None, compression=None) as ws:
        sizes = [0, 1, 125, 126, 65535, 65536, MAX_SIZE]
        for size in sizes:
            text = ("ü€" * size)[: size // 3]
            await ws.send(text)
            data = os.urandom(size)
            await ws.send(data)
        await ws.send(["frag", "mented ", "text"])  # a fragmented message
        pong = await ws.ping(b"are you there")
        await ws.send("after")
        with anyio.fail_after(TIMEOUT):
            for size in sizes:
                assert await ws.recv() == ("ü€" * size)[: size // 3]
                assert len(await ws.recv()) == size
            assert await ws.recv() == "fragmented text"
            await pong
            assert await ws.recv() == "after"


async def test_many_clients_in_parallel_each_get_their_own_messages_in_order(server: LiveServer) -> None:
    async def one(n: int) -> None:
        async with connect(server.ws_url("/"), compression=None) as ws:
            for i in range(200):
                await ws.send(f"{n}:{i}")
            with anyio.fail_after(TIMEOUT):
                assert [await ws.recv() for _ in range(200)] == [f"{n}:{i}" for i in range(200)]

    async with anyio.create_task_group() as tg:
        for n in range(20):
            tg.start_soon(one, n)


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (client_frame(b"hi", mask=False), 1002),
        (client_frame(b"\xff\xfe"), 1007),
        (client_frame(b"x" * (MAX_SIZE + 1), 0x2), 1009),
    ],
)
async def test_a_peer_breaking_the_protocol_gets_its_close_code(
    server: LiveServer, frame: bytes, code: int
) -> None:
    raw = RawClient(server.host, server.port, "/")
    try:
        assert raw.status == 101
        raw.send_frame(b"fine")
        assert raw.recv_frame() == (0x1, b"fine")
        raw.sock.sendall(frame)
        opcode, payload = raw.recv_frame()
        assert opcode == 0x8
        assert struct.unpack("!H", payload[:2])[0] == code
    finally:
        raw.sock.close()


async def test_per_message_deflate_still_works_on_the_general_path() -> None:
    with LiveServer(echo_app, ws=FastWebSocketProtocol, ws_per_message_deflate=True) as live:
        async with connect(live.ws_url("/")) as ws:  # the client offers deflate
            assert ws.protocol.extensions, "deflate was negotiated"
            for i in range(5):
                await ws.send("compressible " * 50 + str(i))
            with anyio.fail_after(TIMEOUT):
                for i in range(5):
                    assert await ws.recv() == "compressible " * 50 + str(i)


async def test_keepalive_pongs_reach_uvicorn_between_data_frames() -> None:
    # uvicorn sends its next ping only once the last one's pong came back, and closes with
    # 1011 when a pong is late: a pong lost on the fast path would end the socket.
    with LiveServer(echo_app, ws=FastWebSocketProtocol, ws_ping_interval=0.01, ws_ping_timeout=2.0) as live:
        raw = RawClient(live.host, live.port, "/")
        try:
            pings = 0
            sent = 0
            while pings < 5:
                raw.send_frame(f"data {sent}".encode())
                opcode, payload = raw.recv_frame()
                while opcode == 0x9:  # a ping may come before the echo
                    pings += 1
                    raw.send_frame(payload, opcode=0xA)
                    opcode, payload = raw.recv_frame()
                assert (opcode, payload) == (0x1, f"data {sent}".encode())
                sent += 1
        finally:
            raw.close()


async def test_the_class_path_works_as_uvicorns_ws_option() -> None:
    with LiveServer(echo_app, ws="rtkit.uvicorn_protocol:FastWebSocketProtocol") as live:
        async with connect(live.ws_url("/")) as ws:
            await ws.send("hello")
            with anyio.fail_after(TIMEOUT):
                assert await ws.recv() == "hello"


@pytest.mark.parametrize("off_by", ["uvicorn release", "websockets release", "uvicorn method"])
async def test_with_the_shortcuts_off_real_clients_are_served_by_uvicorns_code_and_one_warning_says_why(
    off_by: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    if off_by == "uvicorn release":
        monkeypatch.setattr(uvicorn, "__version__", "0.35.0")
        why = "uvicorn 0.35.0 is outside the releases it was tested with"
    elif off_by == "websockets release":
        monkeypatch.setattr(websockets.version, "version", "18.0")
        why = "websockets 18.0 is outside the releases it was tested with"
    else:
        monkeypatch.delattr(WebSocketsSansIOProtocol, "handle_parser_exception")
        why = "has no method 'handle_parser_exception'"
    monkeypatch.setattr(uvicorn_protocol, "_warned", False)
    shortcuts: list[str] = []  # the fast path's own framing or unmasking, were it ever used

    def shortcut(name: str) -> Any:
        def taken(*args: Any) -> Any:
            shortcuts.append(name)
            raise AssertionError(f"the fast path's {name} ran")

        return taken

    monkeypatch.setattr(uvicorn_protocol, "_framed", shortcut("framing"))
    monkeypatch.setattr(uvicorn_protocol, "apply_mask", shortcut("unmasking"))
    protocols: list[Any] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        protocols.append(receive.__self__)  # uvicorn hands the app its protocol's bound methods
        await echo_app(scope, receive, send)

    async def client(live: LiveServer) -> None:
        async with connect(live.ws_url("/"), max_size=None, compression=None) as ws:
            sizes = [0, 1, 125, 126, 65536]
            for size in sizes:
                await ws.send("ü" * size)
                await ws.send(bytes(size))
            await ws.send(["frag", "mented"])
            pong = await ws.ping()
            with anyio.fail_after(TIMEOUT):
                for size in sizes:
                    assert await ws.recv() == "ü" * size
                    assert await ws.recv() == bytes(size)
                assert await ws.recv() == "fragmented"
                await pong

    with LiveServer(app, ws=FastWebSocketProtocol, lifespan="off") as live:
        async with anyio.create_task_group() as tg:
            for _ in range(3):
                tg.start_soon(client, live)
    assert len(protocols) == 3
    assert all(type(p) is FastWebSocketProtocol and not p._fast for p in protocols)
    assert all(type(p.queue) is asyncio.Queue for p in protocols)  # uvicorn's own queue
    assert shortcuts == []
    [warning] = fallback_warnings(caplog)  # one for the three connections
    assert why in warning
    assert "every frame takes uvicorn's path" in warning


async def test_rtkits_broadcast_writes_each_member_its_frame_without_awaiting_send(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rtkit.demo import create_app
    from rtkit.session.outbox import Outbox

    written: list[str] = []
    write_now = FastWebSocketProtocol.write_now

    def counting(self: FastWebSocketProtocol, message: Any) -> bool:
        done = write_now(self, message)
        # Called by the outbox itself, not by the protocol's own send.
        if done and sys._getframe(1).f_code is Outbox.put.__code__ and '"message"' in message["text"]:
            written.append(message["text"])
        return done

    monkeypatch.setattr(FastWebSocketProtocol, "write_now", counting)
    # As `rtkit serve` runs it: without permessage-deflate (frames a client compresses take
    # uvicorn's general path).
    with LiveServer(create_app(), ws=FastWebSocketProtocol, ws_per_message_deflate=False) as live:
        members = [await connect(live.ws_url(f"/ws/chat/now?name=m{i}")) for i in range(4)]
        try:
            for ws in members:
                with anyio.fail_after(TIMEOUT):
                    while '"welcome"' not in str(await ws.recv()):
                        pass
            await members[0].send('{"type":"say","text":"to all"}')
            with anyio.fail_after(TIMEOUT):
                for ws in members:
                    while '"message"' not in (frame := str(await ws.recv())):
                        pass
                    assert '"text":"to all"' in frame
        finally:
            for ws in members:
                await ws.close()
    # The hub offered the frame to each member's outbox, which wrote it through write_now.
    assert len(written) == 4
    assert len(set(written)) == 1
