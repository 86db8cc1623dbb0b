"""A uvicorn WebSocket protocol with a fast path for the frames a real-time app trades most.

uvicorn's ``websockets-sansio`` protocol hands every incoming byte to the websockets library's
generator-based parser, and builds every outgoing frame as a ``Frame`` object that is then
serialized and collected. That is general and correct, and for the small whole text and binary
frames of a chat or a topic feed it is most of a server's cost per message.

``FastWebSocketProtocol`` is that protocol with two shortcuts, each taken only when nothing
else can be going on, and a cheaper way of handing messages to the app:

- **Receiving.** While the connection is open, nothing is left in the websockets parser's
  buffer and no fragmented message is under way, whole masked text or binary frames within
  the size limit are parsed here and queued for the app exactly as uvicorn queues them.
  Anything else (a control frame, a fragment, a reserved bit, an unmasked or oversized frame,
  text that is not UTF-8) is handed, with every byte after it, to the websockets parser, which
  answers it as it always does (pong, close handshake, close codes 1002, 1007, 1009).
- **Sending.** While the connection is open, writable and has nothing else waiting to go out,
  a ``websocket.send`` is framed here (a server's frames are unmasked: two to ten bytes of
  header) and written at once. A broadcast hands every member the same payload object: it is
  framed once and the frame written to each. Everything else takes uvicorn's code.
- **Handing over.** A message the app is already waiting for is handed to it directly, and
  reading goes on. uvicorn queues every message and pauses reading until the app takes it,
  which costs a pause and a resume of the socket (two changes to the event loop's poller)
  per message even when the app was waiting. Reading still pauses while a message waits
  that the app has not asked for yet, so what a peer can make the server hold is bounded
  as before: what one read brings.

One behaviour differs, on purpose: messages a peer sent whole before breaking the protocol
reach the app before the disconnect (uvicorn drops those that came in the same read).

The handshake, keepalive pings, backpressure (sends wait while the transport is paused),
per-message deflate (when a client negotiates it, every frame takes the general path) and
closing are uvicorn's own.

It serves any ASGI app, rtkit's or not. ``rtkit serve`` uses it by default; elsewhere::

    uvicorn app:app --ws rtkit.uvicorn_protocol:FastWebSocketProtocol --ws-per-message-deflate false

or ``uvicorn.run(app, ws=FastWebSocketProtocol, ws_per_message_deflate=False)``: uvicorn
offers deflate unless told not to, browsers always ask for it, and a connection that
negotiated it takes the general path for every frame.

The shortcuts read and override internals of uvicorn's protocol and of the websockets library
that neither promises to keep. They run only on the releases they were tested with
(``SUPPORTED_UVICORN`` and ``SUPPORTED_WEBSOCKETS``: from the first release they work on to
the newest they ran on), and only while every attribute and method they use is there. Otherwise
the class is uvicorn's protocol unchanged, every frame takes uvicorn's path, and a warning says
why, once per process. Both libraries come with rtkit (the ``speed`` extra adds uvloop and
httptools, uvicorn's C event loop and HTTP parser); the protocol class itself needs uvicorn 0.35
or later, the first with ``websockets-sansio``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import threading
from collections import deque
from typing import Any

try:
    import uvicorn
    import websockets.version
    from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol
    from websockets.protocol import State
    from websockets.streams import StreamReader
except ImportError as exc:  # pragma: no cover - depends on what is installed
    raise ImportError(
        "rtkit.uvicorn_protocol needs uvicorn's websockets-sansio protocol (uvicorn 0.35 or later) "
        "and the websockets library, both dependencies of rtkit"
    ) from exc

try:
    from websockets.speedups import apply_mask
except ImportError:  # pragma: no cover - websockets built without its C extension
    from websockets.utils import apply_mask

__all__ = ["FastWebSocketProtocol"]

_logger = logging.getLogger("rtkit.uvicorn_protocol")

# A whole (FIN) frame's first byte: text and binary, no reserved bits.
_FIN_TEXT = 0x81
_FIN_BINARY = 0x82
_MASKED = 0x80
_OPEN = State.OPEN
# Between two frames, the websockets parser waits in ``StreamReader.at_eof``; inside a frame it
# waits in ``read_exact``. (An empty buffer alone says nothing: ``read_exact`` takes bytes out
# as soon as it has them, so the buffer is also empty after a frame's header.)
_BETWEEN_FRAMES = getattr(getattr(StreamReader, "at_eof", None), "__code__", None)


# The releases the shortcuts run on: from the first each works with to the newest it was tested
# with (the upper bound excluded). Raise an upper bound only once the tests pass on the release.
SUPPORTED_UVICORN = ((0, 52, 1), (0, 56))
SUPPORTED_WEBSOCKETS = ((16, 0), (18,))

# What the shortcuts read, call or override of uvicorn's protocol. Attributes that its
# ``__init__`` sets are looked for on the instance; methods on uvicorn's class itself (asyncio's
# ``Protocol`` has do-nothing ``data_received``, ``pause_writing`` and ``resume_writing`` that
# would hide a missing one).
_UVICORN_ATTRIBUTES = (
    "conn",  # the websockets connection
    "loop",  # makes the futures a waiting ``receive`` is handed messages through
    "transport",  # written to, paused and resumed
    "queue",  # replaced: uvicorn's code queues every message for the app through it
    "read_paused",
    "handshake_complete",
    "close_sent",
    "disconnected",  # uvicorn 0.52.1: a send after the peer left raises
    "initial_response",  # a denial response under way
    "writable",  # cleared while the transport asks writers to pause
)
_UVICORN_METHODS = (
    "data_received",  # overridden, and handed what the fast path does not take
    "receive",  # overridden
    "send",  # overridden, and handed what ``write_now`` declines
    "handle_parser_exception",  # closes after a text frame that is not UTF-8
    "pause_writing",  # without these two, ``writable`` never follows the transport
    "resume_writing",
)
# What they read or call of the websockets connection (``conn``).
_WEBSOCKETS_ATTRIBUTES = (
    "state",
    "parser",  # a generator: where it waits says whether it holds part of a frame
    "current_size",  # websockets 16: None unless a fragmented message is under way
    "max_message_size",  # websockets 16
    "writes",  # the bytes waiting to go out
    "extensions",
    "debug",
    "send_close",
)

# The namespaces of uvicorn's protocol class and its bases, asyncio's left out.
_UVICORNS_OWN = tuple(
    vars(cls) for cls in WebSocketsSansIOProtocol.__mro__ if cls not in asyncio.Protocol.__mro__
)


def _release(version: str) -> tuple[int, ...]:
    """The numbers at the start of a version string: ``"0.52.1"`` is ``(0, 52, 1)``."""
    match = re.match(r"\d+(?:\.\d+)*", version)
    return tuple(int(part) for part in match[0].split(".")) if match else ()


def _outside(library: str, version: str, supported: tuple[tuple[int, ...], tuple[int, ...]]) -> str | None:
    """Why ``version`` of ``library`` is not one the shortcuts run on, or None if it is."""
    lowest, beyond = supported
    if lowest <= _release(version) < beyond:
        return None
    low = ".".join(map(str, lowest))
    high = ".".join(map(str, beyond))
    return f"{library} {version} is outside the releases it was tested with (>={low},<{high})"


def _fast_path_blocked(protocol: Any) -> str | None:
    """What keeps the shortcuts off on ``protocol`` (a version out of range, an attribute or
    method missing), or None when nothing does."""
    problem = _outside("uvicorn", uvicorn.__version__, SUPPORTED_UVICORN) or _outside(
        "websockets", websockets.version.version, SUPPORTED_WEBSOCKETS
    )
    if problem:
        return problem
    for name in _UVICORN_METHODS:
        if not any(callable(namespace.get(name)) for namespace in _UVICORNS_OWN):
            return f"uvicorn's WebSocketsSansIOProtocol has no method {name!r}"
    for name in _UVICORN_ATTRIBUTES:
        if not hasattr(protocol, name):
            return f"uvicorn's WebSocketsSansIOProtocol has no attribute {name!r}"
    if not isinstance(protocol.writable, asyncio.Event):
        return "uvicorn's WebSocketsSansIOProtocol.writable is not an asyncio.Event"
    conn = protocol.conn
    for name in _WEBSOCKETS_ATTRIBUTES:
        if not hasattr(conn, name):
            return f"websockets' {type(conn).__name__} has no attribute {name!r}"
    if not isinstance(conn.writes, list):
        return f"websockets' {type(conn).__name__}.writes is not a list"
    if _BETWEEN_FRAMES is None or not hasattr(conn.parser, "gi_yieldfrom"):
        return "the websockets parser does not say where it waits (StreamReader.at_eof, a generator)"
    return None


_warned = False  # whether a protocol of this process found the shortcuts off and said so
_warning = threading.Lock()  # uvicorn servers may run in several threads of one process


def _warn_once(problem: str) -> None:
    """Log, once per process, why the shortcuts are off."""
    global _warned
    with _warning:
        if _warned:
            return
        _warned = True
    _logger.warning("rtkit's fast WebSocket path is off: %s; every frame takes uvicorn's path", problem)


def _between_frames(parser: Any) -> bool:
    """Whether the websockets parser waits for a frame's first byte, holding none of one."""
    # The server's parser delegates to the generic one (``yield from``), which delegates to
    # the reader: the innermost generator says where the parser waits.
    waiting_in = parser.gi_yieldfrom
    while waiting_in is not None:
        inner = waiting_in.gi_yieldfrom
        if inner is None:
            return waiting_in.gi_code is _BETWEEN_FRAMES
        waiting_in = inner
    return False


def _extended_frame_bounds(data: bytes, pos: int) -> tuple[int, int]:
    """Where the payload of the client frame at ``pos`` starts and where the frame ends, for a
    frame with a 16- or 64-bit length (a 7-bit one is read where the frames are parsed).

    A negative start means the header is incomplete: minus how many more bytes it needs.
    """
    available = len(data) - pos
    if data[pos + 1] & 0x7F == 126:
        if available < 4:
            return available - 4, 0
        length = int.from_bytes(data[pos + 2 : pos + 4], "big")
        start = pos + 8
    else:
        if available < 10:
            return available - 10, 0
        length = int.from_bytes(data[pos + 2 : pos + 10], "big")
        start = pos + 14
    return start, start + length


class FastWebSocketProtocol(WebSocketsSansIOProtocol):
    """uvicorn's ``websockets-sansio`` protocol with fast paths for whole data frames.

    Pass the class (or ``"rtkit.uvicorn_protocol:FastWebSocketProtocol"``) as uvicorn's ``ws``
    option. See the module's documentation for what takes the fast path and what does not.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        # An incomplete frame taken on the fast path, and how long it must grow before it can
        # be looked at again (so a peer trickling bytes costs one append per read, not a copy
        # of everything so far).
        self._partial: bytearray | None = None
        self._partial_needs = 0
        problem = _fast_path_blocked(self)
        self._fast = problem is None
        if problem is not None:
            _warn_once(problem)
            return  # uvicorn's protocol, with uvicorn's queue
        # uvicorn's queue of messages for the app, replaced by one that can hand a message
        # straight to an app that waits for it (every part of uvicorn that queues a message
        # goes through its ``put_nowait``).
        self._received = _ReceivedMessages(self.loop)
        self.queue = self._received  # type: ignore[assignment]  # what uvicorn uses of a Queue

    # -- receiving ----------------------------------------------------------------------------

    def data_received(self, data: bytes) -> None:
        """Parse whole data frames here while nothing else is under way; the rest as uvicorn."""
        if not self._fast:
            super().data_received(data)
            return
        partial = self._partial
        if partial is not None:
            partial += data
            if len(partial) < self._partial_needs:
                return
            self._partial = None
            data = bytes(partial)
        if not self._can_take_frames():
            super().data_received(data)
            return
        # One function for the whole read (a call per frame is a good part of a frame's cost).
        limit = self.conn.max_message_size
        received = self._received
        size = len(data)
        pos = 0
        general_from = size  # where the first frame this path does not take starts
        while pos < size:
            if size - pos < 2:
                self._keep_partial(data, pos, 2)
                break
            first = data[pos]
            length = data[pos + 1]
            if (first != _FIN_TEXT and first != _FIN_BINARY) or not length & _MASKED:
                general_from = pos
                break
            length &= 0x7F
            if length < 126:  # the common case: two bytes, then the 4-byte mask
                start = pos + 6
                end = start + length
            else:
                start, end = _extended_frame_bounds(data, pos)
                if start < 0:
                    self._keep_partial(data, pos, size - pos - start)
                    break
            if limit is not None and end - start > limit:
                general_from = pos  # the websockets parser refuses it with 1009
                break
            if end > size:
                self._keep_partial(data, pos, end - pos)
                break
            payload = apply_mask(data[start:end], data[start - 4 : start])
            message: dict[str, Any]
            if first == _FIN_TEXT:
                try:
                    message = {"type": "websocket.receive", "text": payload.decode()}
                except UnicodeDecodeError:
                    self._fail_invalid_utf8()
                    return
            else:
                message = {"type": "websocket.receive", "bytes": payload}
            received.put_nowait(message)
            pos = end
        if received.items and not self.read_paused:
            # As uvicorn does: no more reading until the app has taken what is queued. (What
            # was handed to a waiting app is taken.)
            self.read_paused = True
            self.transport.pause_reading()
        if general_from < size:
            super().data_received(data[general_from:] if general_from else data)

    def _can_take_frames(self) -> bool:
        conn = self.conn
        return (
            conn.state is _OPEN
            and not self.close_sent
            and _between_frames(conn.parser)  # the websockets parser holds no part of a frame
            and conn.current_size is None  # and no fragmented message is under way
            and not conn.extensions
            and not conn.debug  # websockets logs every frame then: let it
        )

    def _fail_invalid_utf8(self) -> None:
        """Close with 1007, as uvicorn does for a text message that is not UTF-8.

        Done here rather than by handing the frame to the websockets parser: that parser would
        also read the rest of the bytes, and if the peer's close frame is among them, uvicorn's
        own 1007 finds the connection already closing and raises out of ``data_received``,
        which aborts the socket with no close frame at all.
        """
        _logger.info("closing with 1007: a text frame from the client was not UTF-8")
        self.conn.send_close(1007)
        self.handle_parser_exception()  # uvicorn's: tell the app, write the close, close

    def _keep_partial(self, data: bytes, pos: int, needs: int) -> None:
        """Hold the incomplete frame at ``pos`` until ``needs`` bytes of it are here."""
        self._partial = bytearray(data[pos:] if pos else data)
        self._partial_needs = needs

    async def receive(self) -> Any:
        """The app's next message: handed over if it has to wait for one; uvicorn's otherwise."""
        if not self._fast:
            return await super().receive()
        received = self._received
        if received.items:
            message = received.items.popleft()
        else:
            # What ``received.get()`` does, without a coroutine of its own: every message this
            # waits for resumes each coroutine on the app's stack.
            waiter = received.wait()
            try:
                message = await waiter
            except BaseException:
                received.withdraw(waiter)
                raise
        if self.read_paused and not received.items:
            self.read_paused = False
            self.transport.resume_reading()
        return message

    # -- sending ------------------------------------------------------------------------------

    def write_now(self, message: Any) -> bool:
        """Frame and write a ``websocket.send`` event at once, if the fast path can take it.

        Returns False, having written nothing, when it cannot (the socket is not open, its
        transport is paused, something else waits to go out, deflate was negotiated, or the
        event is not a well-formed ``websocket.send``): ``send`` must take the event then.
        What the transport's ``write`` raises is raised, as ``send`` would. rtkit's outbox
        calls this instead of awaiting ``send`` (see ``_writes_now_for``).
        """
        if (
            message["type"] == "websocket.send"
            and self._fast
            and self.handshake_complete
            and not self.close_sent
            and not self.disconnected
            and self.initial_response is None
            and self.writable.is_set()
        ):
            conn = self.conn
            if conn.state is _OPEN and not conn.writes and not conn.extensions and not conn.debug:
                # As uvicorn: bytes win over text; anything else takes uvicorn's code and errors.
                data = message.get("bytes")
                if data is None:
                    text = message.get("text")
                    if type(text) is str:
                        self.transport.write(_framed(text))
                        return True
                elif isinstance(data, (bytes, bytearray)):
                    self.transport.write(_framed(data))
                    return True
        return False

    async def send(self, message: Any) -> None:
        """Frame and write a ``websocket.send`` here when the socket can take it; else uvicorn."""
        if not self.write_now(message):
            await super().send(message)

    # The ``send`` that ``write_now`` stands for. A subclass that overrides ``send`` does not
    # match it, so callers that look for ``write_now`` (rtkit's outbox) keep calling its ``send``.
    _writes_now_for = send


# Headers of short frames, built once: FIN, the opcode and a 7-bit length.
_SHORT_TEXT = tuple(bytes((0x81, length)) for length in range(126))
_SHORT_BINARY = tuple(bytes((0x82, length)) for length in range(126))
# The last payload framed, and its frame. A broadcast hands the same text (or bytes) object
# to every member's send: it is encoded and framed once, then written to each socket. Holding
# the payload keeps it alive, so no other object can take its identity; payloads over the
# bound are not kept, so the cache holds little memory.
_CACHED_AT_MOST = 64 * 1024
_last: tuple[object, bytes] = (None, b"")


def _framed(payload: str | bytes | bytearray) -> bytes:
    """The unmasked server frame of a text (``str``) or binary payload."""
    global _last
    last = _last  # one read: another thread's server may replace it meanwhile
    if payload is last[0]:
        return last[1]
    data: bytes | bytearray
    if isinstance(payload, str):
        data = payload.encode()
        short, first = _SHORT_TEXT, 0x81
    else:
        data = payload
        short, first = _SHORT_BINARY, 0x82
    length = len(data)
    if length < 126:
        frame = short[length] + data
    elif length < 0x10000:
        frame = bytes((first, 126)) + length.to_bytes(2, "big") + data
    else:
        frame = bytes((first, 127)) + length.to_bytes(8, "big") + data
    # Only immutable payloads: a bytearray could change before it is sent again.
    if length <= _CACHED_AT_MOST and (type(payload) is str or type(payload) is bytes):
        _last = (payload, frame)
    return frame


class _ReceivedMessages:
    """The messages for the app, first in first out; a waiting ``get`` is handed the next one.

    What uvicorn's protocol uses of its ``asyncio.Queue`` (``put_nowait``, ``get``,
    ``get_nowait``, ``empty``, ``qsize``), without a queue's bound, its task accounting and its
    check of the running loop at every ``get``: the app is its one consumer.
    """

    __slots__ = ("items", "loop", "waiters")

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.items: deque[Any] = deque()
        self.waiters: deque[asyncio.Future[Any]] = deque()

    def put_nowait(self, message: Any) -> None:
        """Hand ``message`` to the oldest waiting ``get``, or keep it for the next one."""
        waiters = self.waiters
        while waiters:
            waiter = waiters.popleft()
            if not waiter.done():  # not cancelled
                waiter.set_result(message)
                return
        self.items.append(message)

    async def get(self) -> Any:
        """The next message, waiting for one if none is kept."""
        if self.items:
            return self.items.popleft()
        waiter = self.wait()
        try:
            return await waiter
        except BaseException:
            self.withdraw(waiter)
            raise

    def wait(self) -> asyncio.Future[Any]:
        """A future that the next message is handed to (call only when none is kept)."""
        waiter = self.loop.create_future()
        self.waiters.append(waiter)
        return waiter

    def withdraw(self, waiter: asyncio.Future[Any]) -> None:
        """Give up waiting on ``waiter`` (its awaiting was cancelled or failed)."""
        if waiter.done() and not waiter.cancelled():
            # Handed a message, then cancelled before it could return it: the message stays
            # first in line rather than being lost.
            self.items.appendleft(waiter.result())
            return
        # Not handed anything: forget it now, or an app that gives up waiting again and again
        # on a silent peer (a receive under a timeout) would pile up dead waiters.
        waiter.cancel()
        with contextlib.suppress(ValueError):
            self.waiters.remove(waiter)

    def get_nowait(self) -> Any:
        """The next message, or ``asyncio.QueueEmpty``."""
        if not self.items:
            raise asyncio.QueueEmpty
        return self.items.popleft()

    def empty(self) -> bool:
        """Whether no message is kept."""
        return not self.items

    def qsize(self) -> int:
        """How many messages are kept."""
        return len(self.items)
