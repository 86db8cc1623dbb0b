"""``RealtimeEndpoint``: Starlette's ``WebSocketEndpoint`` with typed messages and an outbox.

One instance serves one connection, as in Starlette. The life of a connection:

1. the handshake's path and query parameters are converted to ``params_type`` (if declared);
   a mismatch refuses the socket before accept (close 1008, HTTP 403);
2. ``on_connect`` runs; the default accepts, choosing MessagePack when the client offers the
   ``rtkit.msgpack`` subprotocol; returning without accepting refuses the socket;
3. a writer task drains the connection's outbox, while the receive loop decodes each frame to
   the declared ``inbound`` type and calls ``on_<type>`` (or ``on_message``) through
   ``on_receive``; a bad frame gets an ``invalid_message`` error frame and the socket stays;
4. ``on_disconnect`` runs once, whatever ended the connection, and the connection leaves every
   hub channel it had joined.

An exception escaping user code closes that socket with 1011 and is logged with its traceback;
other sockets are not affected.
"""

from __future__ import annotations

import contextlib
import logging
import re
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar

import anyio
import msgspec
from starlette.endpoints import WebSocketEndpoint
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from rtkit._outbox import Outbox, OverflowPolicy
from rtkit._types import Message, Receive, Scope, Send
from rtkit.codec import MSGPACK_SUBPROTOCOL, Codec, WireFormat, codec_for, encode
from rtkit.errors import ConfigurationError
from rtkit.frame import Frame
from rtkit.hub import Hub, new_token
from rtkit.messages import ErrorFrame, Gap, Ref

__all__ = ["RealtimeEndpoint"]

logger = logging.getLogger("rtkit")

Handler = Callable[[Any, WebSocket, Any], Awaitable[None]]

_INVALID = object()
_NON_IDENTIFIER = re.compile(r"\W")
# How long cleanup (on_disconnect, leaving channels) may take while the server shuts down.
_CLEANUP_TIMEOUT = 5.0


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _tag_of(tp: Any) -> str | None:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        tag = tp.__struct_config__.tag
        return str(tag) if tag is not None else None
    return None


class RealtimeEndpoint(WebSocketEndpoint):
    """A WebSocket endpoint with typed inbound messages, per-type handlers and an outbox.

    Subclass it, declare ``inbound`` (usually a union of tagged msgspec Structs) and write one
    ``async def on_<tag>(self, websocket, message)`` per type, or one ``on_message``::

        class Say(msgspec.Struct, tag="say"):
            text: str

        class Shout(RealtimeEndpoint):
            inbound = Say

            async def on_say(self, websocket: WebSocket, message: Say) -> None:
                await self.send_message({"type": "shout", "text": message.text.upper()})

    Starlette's hooks keep their meaning: ``on_connect`` (accepts by default), ``on_receive``
    (receives the *decoded* message and routes it), ``on_disconnect``. Starlette's ``encoding``
    attribute is not used: frames are decoded by ``inbound``.

    Endpoints that use a hub get it as a keyword argument: ``RealtimeRouter`` passes it, or wrap
    the class yourself with ``functools.partial(MyEndpoint, hub=hub)``.
    """

    inbound: ClassVar[Any] = None
    """The type each frame decodes to; None hands ``on_receive`` the raw ``str``/``bytes``."""
    params_type: ClassVar[type[Any] | None] = None
    """A msgspec Struct built from the path and query parameters of the handshake."""
    allow_msgpack: ClassVar[bool] = True
    """Accept the ``rtkit.msgpack`` subprotocol (binary MessagePack frames)."""
    outbox_max_bytes: ClassVar[int] = 1 << 20
    """The most payload bytes queued for one socket."""
    outbox_max_messages: ClassVar[int] = 4096
    """The most frames queued for one socket."""
    overflow: ClassVar[OverflowPolicy] = "disconnect"
    """What a full outbox does: close 1013 (``disconnect``), ``drop_oldest`` or ``drop_newest``."""

    _codec: ClassVar[Codec | None] = None
    _routes: ClassVar[dict[type[Any], Handler]] = {}
    _custom_on_receive: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._prepare()

    @classmethod
    def _prepare(cls) -> None:
        """Build the class's decoder and its table of handlers, once, and check them."""
        cls._custom_on_receive = cls.on_receive is not RealtimeEndpoint.on_receive
        cls._routes = {}
        if cls.inbound is None:
            cls._codec = None
            return
        cls._codec = codec_for(cls.inbound)
        has_on_message = cls.on_message is not RealtimeEndpoint.on_message
        for member in _union_members(cls.inbound):
            tag = _tag_of(member)
            handler = getattr(cls, f"on_{_NON_IDENTIFIER.sub('_', tag)}", None) if tag else None
            if handler is not None:
                cls._routes[member] = handler
            elif not has_on_message and not cls._custom_on_receive:
                name = f"on_{_NON_IDENTIFIER.sub('_', tag)}" if tag else "on_message"
                raise ConfigurationError(
                    f"{cls.__name__}.inbound accepts {getattr(member, '__name__', member)!r} "
                    f"but the class has no {name}(self, websocket, message) and no on_message "
                    "to handle it."
                )

    def __init__(self, scope: Scope, receive: Receive, send: Send, *, hub: Hub | None = None) -> None:
        super().__init__(scope, receive, send)
        self._hub = hub
        self.token = new_token()
        """This connection's id, unique across processes."""
        self.wire: WireFormat = "json"
        """The connection's wire format, fixed at accept."""
        self.params: Any = None
        """The handshake's parameters as ``params_type``, or None if none is declared."""
        self.websocket: WebSocket = WebSocket(scope, receive=receive, send=send)
        """Starlette's view of the connection: headers, cookies, path and query parameters."""
        self.outbox = Outbox(
            max_bytes=self.outbox_max_bytes,
            max_messages=self.outbox_max_messages,
            policy=self.overflow,
        )
        """Frames waiting for this socket."""

    @property
    def hub(self) -> Hub:
        """The hub this endpoint publishes to and subscribes through."""
        if self._hub is None:
            raise ConfigurationError(
                f"{type(self).__name__} needs a Hub: mount it with RealtimeRouter, or route "
                "functools.partial(Endpoint, hub=hub)."
            )
        return self._hub

    # -- Starlette's hooks ------------------------------------------------------------------

    async def on_connect(self, websocket: WebSocket) -> None:
        """Accept the connection (override to authenticate, join rooms, or refuse)."""
        await self.accept()

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        """Route a decoded message to ``on_<tag>``, or to ``on_message``."""
        handler = self._routes.get(type(data))
        if handler is not None:
            await handler(self, websocket, data)
        else:
            await self.on_message(websocket, data)

    async def on_message(self, websocket: WebSocket, message: Any) -> None:
        """Handle a message no ``on_<tag>`` method claims. Override it to use it."""

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        """Called once when the connection ends, however it ended."""

    def on_gap(self, channel: str, missed: int) -> None:
        """Messages of a subscribed ``channel`` were lost between processes: tell the client.

        Called by the hub, in the event loop; it must only queue (never await). The default
        sends ``{"type": "gap", "channel": channel, "missed": missed}``.
        """
        self.send_frame(Frame(encode(Gap(channel=channel, missed=missed))))

    # -- operations for subclasses ----------------------------------------------------------

    async def accept(self, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Accept the handshake, choosing MessagePack if the client offers ``rtkit.msgpack``."""
        subprotocol = None
        if self.allow_msgpack and MSGPACK_SUBPROTOCOL in self.websocket.scope.get("subprotocols", ()):
            subprotocol = MSGPACK_SUBPROTOCOL
            self.wire = "msgpack"
        await self.websocket.accept(subprotocol=subprotocol, headers=headers)

    async def send_message(self, message: Any) -> None:
        """Queue ``message`` (a Struct or any msgspec-encodable value) for this socket.

        Returns at once: the writer task sends it, after everything queued before it.
        """
        self.send_frame(Frame(encode(message)))

    def send_frame(self, frame: Frame) -> bool:
        """Queue an already encoded ``Frame``; False if the outbox refused it."""
        return self.outbox.put(frame.event(self.wire), frame.size)

    def offer(self, frame: Frame) -> bool:
        """The hub's entry point: queue a fanned-out frame without waiting."""
        return self.outbox.put(frame.event(self.wire), frame.size)

    async def send_error(self, code: str, detail: str, *, ref: Ref = None) -> None:
        """Answer the peer with an error frame; the connection stays open."""
        self._queue_error(code, detail, ref)

    def _queue_error(self, code: str, detail: str, ref: Ref) -> None:
        self.send_frame(Frame(encode(ErrorFrame(code=code, detail=detail, ref=ref))))

    async def close(self, code: int = 1000, reason: str = "") -> None:
        """Close the connection after the frames already queued have been sent."""
        if self.websocket.application_state == WebSocketState.CONNECTING:
            await self.websocket.close(code, reason)
        else:
            self.outbox.close(code, reason)

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``'s messages on this socket; returns when that is in place."""
        await self.hub.subscribe(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s messages."""
        await self.hub.unsubscribe(channel, self)

    async def publish(self, channel: str, message: Any, *, include_self: bool = True) -> None:
        """Publish ``message`` on ``channel`` through the hub (encoded once)."""
        await self.hub.publish(channel, message, exclude=None if include_self else self)

    # -- the connection's life --------------------------------------------------------------

    async def dispatch(self) -> None:
        """Run the connection: handshake, receive loop and writer, then cleanup."""
        websocket = self.websocket
        if not await self._parse_params(websocket):
            return
        close_code = 1000
        try:
            try:
                await self.on_connect(websocket)
            except Exception:
                close_code = await self._fail("on_connect")
                return
            if websocket.application_state != WebSocketState.CONNECTED:
                if websocket.application_state == WebSocketState.CONNECTING:
                    await websocket.close(1008)  # refused: uvicorn answers HTTP 403
                close_code = 1008
                return
            close_code = await self._serve(websocket)
        finally:
            await self._cleanup(websocket, close_code)

    async def _parse_params(self, websocket: WebSocket) -> bool:
        if self.params_type is None:
            return True
        raw = {**websocket.query_params, **websocket.path_params}
        try:
            self.params = msgspec.convert(raw, self.params_type, strict=False)
        except msgspec.ValidationError as exc:
            await websocket.close(1008, f"invalid parameters: {exc}"[:120])
            return False
        return True

    async def _serve(self, websocket: WebSocket) -> int:
        fault: BaseException | None = None
        close_code = 1006
        async with anyio.create_task_group() as tg:
            tg.start_soon(self._write, tg.cancel_scope)
            try:
                close_code = await self._receive_loop(websocket)
            except WebSocketDisconnect as exc:  # user code sent to a socket that had gone
                close_code = exc.code
            except OSError:
                close_code = 1006
            except Exception as exc:  # the one boundary: a fault in user code
                fault = exc
            tg.cancel_scope.cancel()
        if fault is not None:
            return await self._fail("a handler", fault)
        if self._sent_close is not None:
            return self._sent_close
        return close_code

    _sent_close: int | None = None

    async def _write(self, scope: anyio.CancelScope) -> None:
        try:
            code, _ = await self.outbox.drain(self.send)
            self._sent_close = code
        except (OSError, WebSocketDisconnect):
            pass  # the peer is gone; the receive loop learns it from the server
        finally:
            scope.cancel()

    async def _receive_loop(self, websocket: WebSocket) -> int:
        receive = self.receive
        route = None if self._custom_on_receive else self._routes
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                data = self._decode(message)
                if data is _INVALID:
                    continue
                handler = route.get(type(data)) if route is not None else None
                if handler is not None:
                    await handler(self, websocket, data)
                else:
                    await self.on_receive(websocket, data)
            elif message["type"] == "websocket.disconnect":
                return int(message.get("code") or 1000)

    def _decode(self, message: Message) -> Any:
        text = message.get("text")
        raw: str | bytes | None = text if text is not None else message.get("bytes")
        codec = self._codec
        if codec is None:
            return raw
        if raw is None or (text is None) == (self.wire == "json"):
            expected = "text (JSON)" if self.wire == "json" else "binary (MessagePack)"
            self._queue_error("invalid_message", f"expected {expected} frames on this connection", None)
            return _INVALID
        try:
            return codec.decode(raw, self.wire)
        except msgspec.DecodeError as exc:
            self._queue_error("invalid_message", str(exc), codec.ref_of(raw, self.wire))
            return _INVALID

    async def _fail(self, where: str, exc: BaseException | None = None) -> int:
        """Log a fault in user code and close the socket with 1011."""
        logger.error(
            "%s: unhandled exception in %s; closing the socket with 1011",
            type(self).__name__,
            where,
            exc_info=exc if exc is not None else True,
        )
        state = self.websocket.application_state
        if state != WebSocketState.DISCONNECTED and self._sent_close is None:
            with contextlib.suppress(OSError, RuntimeError):  # the peer may be gone already
                await self.send({"type": "websocket.close", "code": 1011, "reason": ""})
        return 1011

    async def _cleanup(self, websocket: WebSocket, close_code: int) -> None:
        with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
            try:
                await self.on_disconnect(websocket, close_code)
            except Exception:
                logger.exception("%s: unhandled exception in on_disconnect", type(self).__name__)
            finally:
                if self._hub is not None:
                    await self._hub.unsubscribe_all(self)
