"""``RealtimeEndpoint``: Starlette's ``WebSocketEndpoint`` with typed messages, guards and an outbox.

One instance serves one connection, as in Starlette. The life of a connection:

1. admission, before accept: the handshake's path and query parameters are converted to
   ``params_type``; the ``authenticator`` turns the handshake into ``self.principal``;
   ``on_handshake`` checks what else it likes; the connection caps are checked. A refusal
   answers HTTP 403 or 503 with its reason as the body, and logs one WARNING line;
2. ``on_connect`` runs; the default accepts, choosing MessagePack when the client offers the
   ``rtkit.msgpack`` subprotocol; returning without accepting refuses the socket;
3. the receive loop, in a task of its own, hands each frame to the guard
   (``rtkit.session.guard``: size, rate, decoding to ``inbound``, as pure code) and calls
   ``on_<type>`` (or ``on_message``) through ``on_receive``; a bad frame gets an error frame
   and the socket stays. Frames for the socket (``queue_message`` and its kin, which never
   wait) are sent at once when it can take them (see ``rtkit.session.outbox``); a writer task,
   started when first needed, sends the ones that have to wait. The watch task follows the
   deadlines ``rtkit.session.watchdog`` computes (idle timeout, heartbeats, a stalled
   handler), and ``rtkit.session.closing`` keeps who closes, with which code, by when;
4. ``on_disconnect`` runs once, whatever ended the connection (for at most 5 s, then it is
   cancelled), and the connection leaves every hub channel it had joined, in any case.

An exception escaping user code closes that socket with 1011 and is logged with its traceback;
other sockets are not affected. The guards and their answers are listed in ``rtkit.limits``.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import re
import time
import types
import typing
from collections.abc import Awaitable, Callable
from typing import Any, ClassVar, Literal, NamedTuple, TypeAlias

import anyio
import msgspec
from anyio.abc import TaskGroup
from starlette.endpoints import WebSocketEndpoint
from starlette.responses import PlainTextResponse
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from rtkit._line_budget import LineBudget
from rtkit._passthrough import unwrap_send
from rtkit._types import Receive, Scope, Send
from rtkit.auth import BEARER_SUBPROTOCOL, Authenticator, Principal
from rtkit.channels import check_namespace
from rtkit.codec import (
    JSON_SUBPROTOCOL,
    MSGPACK_SUBPROTOCOL,
    Codec,
    WireFormat,
    codec_for,
    encode,
    encode_json,
)
from rtkit.errors import (
    BackendUnavailableError,
    ConfigurationError,
    HandshakeRefusedError,
    NoMessagePackFormError,
    refusal_close_code,
)
from rtkit.frame import Frame
from rtkit.hub import Hub, new_subscriber_id
from rtkit.limits import Limits
from rtkit.messages import ErrorFrame, Gap, Heartbeat, Ref
from rtkit.metrics import Metrics
from rtkit.session.closing import Closing, Stage
from rtkit.session.guard import REFUSED, Close, FrameGuard, Reply
from rtkit.session.inbox import Inbox
from rtkit.session.outbox import Outbox
from rtkit.session.watchdog import Watchdog
from rtkit.status import CloseCode, ErrorCode

# The ASGI servers whose own OSError subclasses mean "the peer has gone" (uvicorn's
# ClientDisconnected), recognised by the package that defines them, so that the core need not
# import any server.
_SERVER_PACKAGES = frozenset({"uvicorn"})


def _peer_gone(exc: BaseException) -> bool:
    """Whether ``exc``, raised by a send, says the peer has gone rather than a fault.

    The ASGI spec has a send to a closed connection raise an ``OSError``: the server's own
    subclass, or the socket's ``ConnectionError``. Any other error escaping a handler (a
    ``TimeoutError``, a ``FileNotFoundError``) is a fault in the handler's code.
    """
    if isinstance(exc, ConnectionError):  # reset, aborted, broken pipe
        return True
    return isinstance(exc, OSError) and type(exc).__module__.partition(".")[0] in _SERVER_PACKAGES


__all__ = ["Action", "RealtimeEndpoint"]

logger = logging.getLogger("rtkit")

Handler = Callable[[Any, WebSocket, Any], Awaitable[None]]
Action: TypeAlias = Literal["subscribe", "publish", "join"]
"""What ``on_authorize`` is asked about."""

_NON_IDENTIFIER = re.compile(r"\W")
_HEARTBEAT = Frame(encode(Heartbeat()))
# How long on_disconnect may take, and then leaving the channels (a deadline each), also while
# the server shuts down.
_CLEANUP_TIMEOUT = 5.0
_DENIAL_EXTENSION = "websocket.http.response"
# Every refusal is logged, up to this many lines a second; a flood of refused peers is summed
# up in the next line written instead of flooding the log.
_REFUSAL_LINES = LineBudget(per_second=20)


class Refusal(NamedTuple):
    """Why a handshake is turned away before accept, and how."""

    why: str
    """The label ``hub.metrics.refused`` counts it under (``params``, ``auth``, ``capacity``...)."""
    status: int
    """The HTTP status of the denial response."""
    reason: str
    """Plain words for the peer and the log (the denial's body); never a secret."""

    @property
    def code(self) -> int:
        """The close code for a server that cannot send an HTTP response."""
        return refusal_close_code(self.status)

    def response(self, retry_after: int) -> PlainTextResponse:
        """The HTTP denial: the reason as its body, and when to retry a 503."""
        retry = {"Retry-After": str(retry_after)} if self.status == 503 else None
        return PlainTextResponse(self.reason, self.status, headers=retry)


def _status_for(code: int) -> int:
    """The HTTP status of a refusal that ``on_connect`` made by closing with ``code``."""
    if code == CloseCode.TRY_AGAIN_LATER:
        return 503
    return 500 if code == CloseCode.INTERNAL_ERROR else 403


def _union_members(tp: Any) -> tuple[Any, ...]:
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        return typing.get_args(tp)
    return (tp,)


def _handler_name(tp: Any) -> str | None:
    if isinstance(tp, type) and issubclass(tp, msgspec.Struct):
        tag = tp.__struct_config__.tag
        if tag is not None:
            return f"on_{_NON_IDENTIFIER.sub('_', str(tag))}"
    return None


class RealtimeEndpoint(WebSocketEndpoint):
    """A WebSocket endpoint with typed inbound messages, per-type handlers, guards and an outbox.

    Subclass it, declare ``inbound`` (usually a union of tagged msgspec Structs) and write one
    ``async def on_<tag>(self, websocket, message)`` per type, or one ``on_message``.

    Starlette's hooks keep their meaning: ``on_connect`` (accepts by default), ``on_receive``
    (receives the *decoded* message and routes it), ``on_disconnect``. Starlette's ``encoding``
    attribute is not used: frames are decoded by ``inbound``.

    Endpoints get their hub, and optionally per-route ``limits`` and ``authenticator``, as
    keyword arguments: ``RealtimeRouter.add`` passes them, or route
    ``functools.partial(MyEndpoint, hub=hub)`` yourself.
    """

    inbound: ClassVar[Any] = None
    """The type each frame decodes to; None hands ``on_receive`` the raw ``str``/``bytes``."""
    params_type: ClassVar[type[Any] | None] = None
    """A msgspec Struct built from the path and query parameters of the handshake."""
    allow_msgpack: ClassVar[bool] = True
    """Accept the ``rtkit.msgpack`` subprotocol (binary MessagePack frames)."""
    limits: Limits = Limits()
    """The connection's limits; a route may override them (``router.add(..., limits=...)``)."""
    authenticator: Authenticator | None = None
    """Turns the handshake into ``self.principal``; None lets everyone in as ``principal=None``."""
    eager_send: ClassVar[bool] = True
    """On asyncio, a frame offered while the socket's writer is idle is sent at once by the
    offering task (a broadcast then costs one call per member, no task switch); a send that
    has to wait is finished by the writer. Turn it off for an ASGI server whose ``send`` ties
    itself to the calling task (uvicorn's does not)."""
    namespace: ClassVar[str] = ""
    """Where the ready handlers' topics and rooms live (``TopicEndpoint``, ``ChatEndpoint``):
    classes of one namespace share them, others never do. A class whose ``on_authorize`` is
    stricter than another route's on the same hub needs a namespace of its own, or a client
    of that route reaches its topics. 1 to 64 of ``A-Z a-z 0-9 _ . -``, or "" for none."""

    _codec: ClassVar[Codec | None] = None
    _routes: ClassVar[dict[type[Any], Handler]] = {}
    _custom_on_receive: ClassVar[bool] = False

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls._prepare()

    @classmethod
    def _prepare(cls) -> None:
        """Build the class's decoder and its table of handlers, once, and check them."""
        check_namespace(cls.namespace)
        cls._custom_on_receive = cls.on_receive is not RealtimeEndpoint.on_receive
        cls._routes = {}
        if cls.inbound is None:
            cls._codec = None
            return
        cls._codec = codec_for(cls.inbound)
        has_on_message = cls.on_message is not RealtimeEndpoint.on_message
        for member in _union_members(cls.inbound):
            name = _handler_name(member)
            handler = getattr(cls, name, None) if name else None
            if handler is not None:
                cls._routes[member] = handler
            elif not has_on_message and not cls._custom_on_receive:
                raise ConfigurationError(
                    f"{cls.__name__}.inbound accepts {getattr(member, '__name__', member)!r} "
                    f"but the class has no {name or 'on_<type>'}(self, websocket, message) and "
                    "no on_message to handle it."
                )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        *,
        hub: Hub | None = None,
        limits: Limits | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        effective_limits = limits if limits is not None else self.limits
        metrics = hub.metrics if hub is not None else Metrics()
        # The fields each received frame reads or writes are set first: instance attributes
        # are stored in the order first set, so these share a cache line, which a frame on
        # one of many connections often finds cold.
        self._inbox: Inbox | None = None
        self._last_inbound = time.monotonic()
        self._handling_since: float | None = None
        self._watching = False
        self.wire: WireFormat = "json"
        """The connection's wire format, fixed at accept."""
        self.outbox = Outbox(
            max_bytes=effective_limits.outbox_max_bytes,
            max_messages=effective_limits.outbox_max_messages,
            policy=effective_limits.overflow,
            metrics=metrics,
            on_overflow=self._on_overflow,
            eager=self.eager_send,
        )
        """Frames waiting for this socket."""
        super().__init__(scope, receive, send)
        self._hub = hub
        if limits is not None:
            self.limits = limits
        if authenticator is not None:
            self.authenticator = authenticator
        self.metrics: Metrics = metrics
        """The counters this connection adds to (its hub's)."""
        self.connection_id = new_subscriber_id()
        """This connection's id, unique across processes (the hub's subscriber id)."""
        self.params: Any = None
        """The handshake's parameters as ``params_type``, or None if none is declared."""
        self.principal: Principal | None = None
        """Who the authenticator said the peer is, or None without an authenticator."""
        self.websocket: WebSocket = WebSocket(scope, receive=receive, send=send)
        """Starlette's view of the connection: headers, cookies, path and query parameters."""
        self._task_group: TaskGroup | None = None
        self._closing = Closing(effective_limits.slow_close_timeout)
        self._frame_send: Send = send
        self._admitted = False
        self._counted_principal: str | None = None  # whose per-principal count holds this one

    @property
    def subscriber_id(self) -> int:
        """The hub's name for this connection: its ``connection_id``."""
        return self.connection_id

    @property
    def hub(self) -> Hub:
        """The hub this endpoint publishes to and subscribes through."""
        if self._hub is None:
            raise ConfigurationError(
                f"{type(self).__name__} needs a Hub: mount it with RealtimeRouter, or route "
                "functools.partial(Endpoint, hub=hub)."
            )
        return self._hub

    # -- Starlette's hooks, and rtkit's ------------------------------------------------------

    async def on_connect(self, websocket: WebSocket) -> None:
        """Accept the connection (override to join rooms, or refuse by not accepting)."""
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
        """Called once when the connection ends, however it ended; cancelled after 5 s.

        The connection leaves its hub channels after this returns (or is cancelled), so it can
        still read ``hub.channels_of(self)`` here.
        """

    async def on_handshake(self, websocket: WebSocket) -> None:
        """Check the handshake before accept; raise ``HandshakeRefusedError`` to refuse it.

        Runs after the parameters and the authenticator, before the connection caps and
        ``on_connect``. A plain HTTP GET of the route runs it too (the router answers what a
        handshake would get), so it must only read and check, never join or publish. The
        default accepts everything.
        """

    async def on_authorize(self, action: Action, name: str) -> bool:
        """May ``self.principal`` ``subscribe`` to, ``publish`` on or ``join`` ``name``?

        The ready handlers ask before each of those; a refusal answers an error frame with
        code ``forbidden`` and the connection stays. The default allows everything.
        """
        return True

    def on_gap(self, channel: str, missed: int) -> None:
        """Messages of a subscribed ``channel`` were lost between processes: tell the client.

        Called by the hub, in the event loop; it must only queue (never await). The default
        sends ``{"type": "gap", "channel": channel, "missed": missed}``.
        """
        self.queue_frame(Frame(encode(Gap(channel=channel, missed=missed))))

    # -- operations for subclasses ----------------------------------------------------------

    async def accept(self, *, headers: list[tuple[bytes, bytes]] | None = None) -> None:
        """Accept the handshake, choosing MessagePack if the client offers ``rtkit.msgpack``.

        A client that offered its token as a subprotocol pair (``rtkit.bearer``) gets
        ``rtkit.bearer`` back, never the token.
        """
        offered = self.websocket.scope.get("subprotocols", ())
        subprotocol = None
        if self.allow_msgpack and MSGPACK_SUBPROTOCOL in offered:
            subprotocol = MSGPACK_SUBPROTOCOL
            self.wire = "msgpack"
        elif JSON_SUBPROTOCOL in offered:
            subprotocol = JSON_SUBPROTOCOL
        elif BEARER_SUBPROTOCOL in offered:
            subprotocol = BEARER_SUBPROTOCOL
        try:
            await self.websocket.accept(subprotocol=subprotocol, headers=headers)
        except OSError as exc:
            # The peer left during the handshake (uvicorn raises an OSError then): a disconnect
            # like any other, not a fault of the app.
            self.websocket.application_state = WebSocketState.DISCONNECTED
            raise WebSocketDisconnect(CloseCode.ABNORMAL) from exc

    def queue_message(self, message: Any) -> bool:
        """Queue ``message`` (a Struct or any msgspec-encodable value) for this socket.

        Never waits: the frame goes out at once when the socket can take it and nothing is
        queued ahead of it, else after everything queued before it. False if the outbox
        refused it (full under ``drop_newest``, or closing).
        """
        payload = encode_json(message)
        if self.wire != "json":
            return self.queue_frame(Frame(payload))
        # The common case, kept short (a reply is hot): no Frame.
        return self.outbox.put({"type": "websocket.send", "text": payload.decode()}, len(payload))

    def queue_frame(self, frame: Frame, *, first: bool = False) -> bool:
        """Queue an already encoded ``Frame`` (encoded once, for any number of sockets).

        With ``first``, it goes out before everything still queued (a ``welcome`` that must
        come before the room's traffic). Never waits; False if the outbox refused it.
        """
        event = frame.event(self.wire)
        if first:
            return self.outbox.put_front(event, frame.size)
        return self._queue(event, frame.size)

    def queue_raw(self, data: str | bytes) -> bool:
        """Queue a frame as it is: ``str`` as a text frame, ``bytes`` as a binary one.

        For endpoints without an ``inbound`` type (an echo, a proxy). Never waits; False if
        the outbox refused it.
        """
        if isinstance(data, str):
            # Charged in bytes, as every frame is: a character may take up to four.
            return self._queue({"type": "websocket.send", "text": data}, len(data.encode()))
        return self._queue({"type": "websocket.send", "bytes": data}, len(data))

    @property
    def offer(self) -> Callable[[Frame], bool]:
        """The hub's entry point: ``offer(frame)`` queues a fanned-out frame without waiting.

        The hub looks it up once per subscription. An accepted JSON connection that sends
        eagerly gets its outbox's own ``offer_text``: a broadcast then reads nothing of the
        endpoint, member after member.
        """
        if (
            self.wire == "json"
            and self.outbox.eager_capable
            and self.websocket.application_state == WebSocketState.CONNECTED
        ):
            return self.outbox.offer_text
        return self._offer

    def _offer(self, frame: Frame) -> bool:
        try:
            event = frame.event(self.wire)
        except NoMessagePackFormError:  # logged once by the frame; this socket misses it
            self.outbox.count_dropped(1)
            return False
        return self._queue(event, frame.size)

    def _queue(self, event: dict[str, Any], size: int) -> bool:
        # Without the eager send (trio) this wakes the writer at once: a handler that sends
        # and then awaits (progress reports, say) must not hold its frames until it returns.
        return self.outbox.put(event, size)

    def queue_error(self, code: ErrorCode | str, detail: str, *, ref: Ref = None) -> bool:
        """Queue an error frame ``{"type": "error", "code", "detail", "ref"}`` for the peer;
        the connection stays open. Never waits; counted in ``metrics.errors``."""
        code = str(code)  # the counters are keyed by the plain string
        self.metrics.errors[code] += 1
        return self.queue_frame(Frame(encode(ErrorFrame(code=code, detail=detail, ref=ref))))

    async def close(self, code: int = CloseCode.NORMAL, reason: str = "") -> None:
        """Close the connection after the frames already queued have been sent.

        Before accept (in ``on_connect``) it refuses the handshake: HTTP 403 (503 for 1013,
        500 for 1011) with ``reason`` as the body, where the server can send one.
        """
        if self.websocket.application_state == WebSocketState.CONNECTING:
            self._closing.refuse(code)
            refusal = Refusal("on_connect", _status_for(code), reason or "refused by the server")
            self._log_refusal(refusal)
            await self._deny(refusal, code)
        else:
            self._request_close(code, reason)

    async def subscribe(self, channel: str) -> None:
        """Receive ``channel``'s messages on this socket; returns when that is in place."""
        await self.hub.subscribe(channel, self)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``'s messages."""
        await self.hub.unsubscribe(channel, self)

    async def publish(self, channel: str, message: Any, *, include_self: bool = True) -> None:
        """Publish ``message`` on ``channel`` through the hub (encoded once)."""
        await self.hub.publish(channel, message, exclude=None if include_self else self)

    # -- admission --------------------------------------------------------------------------

    async def dispatch(self) -> None:
        """Run the connection: admission, handshake, receive loop and writer, then cleanup."""
        websocket = self.websocket
        if not await self._admit(websocket):
            return
        close_code: int = CloseCode.NORMAL
        try:
            try:
                await self.on_connect(websocket)
            except BackendUnavailableError as exc:
                # Not a fault of this server's code: the backend is out of reach for now.
                logger.warning("%s: backend unavailable during on_connect: %s", type(self).__name__, exc)
                close_code = await self._unavailable(websocket)
                return
            except WebSocketDisconnect as exc:
                close_code = exc.code  # the peer left during the handshake
                return
            except HandshakeRefusedError as exc:
                if websocket.application_state != WebSocketState.CONNECTING:
                    # Accepted already: too late to refuse, a mistake in on_connect.
                    close_code = await self._fail("on_connect", exc)
                    return
                await self.close(exc.code, exc.reason)
            except Exception:
                close_code = await self._fail("on_connect")
                return
            if websocket.application_state != WebSocketState.CONNECTED:
                if websocket.application_state == WebSocketState.CONNECTING:
                    await self.close(
                        CloseCode.POLICY_VIOLATION, "refused by the server"
                    )  # on_connect did not accept
                self.metrics.refused["on_connect"] += 1
                close_code = self._closing.code or CloseCode.POLICY_VIOLATION
                return
            self.metrics.connections_accepted += 1
            close_code = await self._serve(websocket)
        finally:
            self.metrics.closes[int(close_code)] += 1
            await self._cleanup(websocket, close_code)

    async def _admit(self, websocket: WebSocket) -> bool:
        """Parameters, authentication, ``on_handshake`` and connection caps, before accept."""
        refusal = await self.admission_refusal(websocket)
        if refusal is not None:
            return await self._refuse(refusal)
        metrics = self.metrics
        per_principal = self.limits.max_connections_per_principal
        if self.principal is not None and per_principal is not None:
            metrics.open_by_principal[self.principal.id] += 1
            # Given back under this name at cleanup, whatever self.principal is by then.
            self._counted_principal = self.principal.id
        metrics.connections_open += 1
        self._admitted = True
        return True

    async def admission_refusal(self, websocket: WebSocket) -> Refusal | None:
        """Why the handshake would be refused before accept, or None; counts nothing.

        Sets ``self.params`` and ``self.principal`` on the way. The router also runs it for a
        plain HTTP GET of the route, to say what a handshake would get.
        """
        if self.params_type is not None:
            raw = {**websocket.query_params, **websocket.path_params}
            try:
                self.params = msgspec.convert(raw, self.params_type, strict=False)
            except msgspec.ValidationError as exc:
                return Refusal("params", 403, f"invalid parameters: {exc}")
        if self.authenticator is not None:
            try:
                self.principal = await self.authenticator.authenticate(websocket)
            except HandshakeRefusedError as exc:
                return Refusal("auth", exc.status, exc.reason)
            except Exception:
                logger.exception("%s: the authenticator failed; refusing the socket", type(self).__name__)
                return Refusal("auth_error", 500, "authentication failed")
            if self.principal is None:
                return Refusal("auth", 403, "not authenticated")
        try:
            await self.on_handshake(websocket)
        except HandshakeRefusedError as exc:
            return Refusal("handshake", exc.status, exc.reason)
        except Exception:
            logger.exception("%s: unhandled exception in on_handshake; refusing it", type(self).__name__)
            return Refusal("handshake_error", 500, "server error")
        limits, metrics = self.limits, self.metrics
        if limits.max_connections is not None and metrics.connections_open >= limits.max_connections:
            return Refusal("capacity", 503, "server at capacity")
        per_principal = limits.max_connections_per_principal
        principal = self.principal.id if self.principal is not None else None
        if (
            principal is not None
            and per_principal is not None
            and (metrics.open_by_principal[principal] >= per_principal)
        ):
            return Refusal("principal_capacity", 503, "too many connections for this principal")
        return None

    async def _refuse(self, refusal: Refusal) -> bool:
        """Count, log and answer a refusal before accept."""
        self.metrics.refused[refusal.why] += 1
        self._log_refusal(refusal)
        await self._deny(refusal, refusal.code)
        return False

    def _log_refusal(self, refusal: Refusal) -> None:
        held_back = _REFUSAL_LINES.take(time.monotonic())
        if held_back is None:
            return
        scope = self.websocket.scope
        client = scope.get("client")
        peer = f"{client[0]}:{client[1]}" if client else "a peer"
        # The path only: a query string may hold a token.
        path = scope.get("path", "")
        more = f" ({held_back} more refusals not logged)" if held_back else ""
        logger.warning(
            "%s refused %s on %s: HTTP %d, %s%s",
            type(self).__name__,
            peer,
            path,
            refusal.status,
            refusal.reason,
            more,
        )

    async def _deny(self, refusal: Refusal, code: int) -> None:
        """An HTTP response with the reason where the server allows one, else a close."""
        websocket = self.websocket
        try:
            if _DENIAL_EXTENSION in websocket.scope.get("extensions", {}):
                await websocket.send_denial_response(refusal.response(self.limits.retry_after))
            else:
                await websocket.close(code, refusal.reason)
        except OSError as exc:
            if not _peer_gone(exc):
                raise  # a peer that has gone needs no refusal; anything else is a fault

    # -- the connection's life --------------------------------------------------------------

    async def _serve(self, websocket: WebSocket) -> int:
        outcome: list[int | Exception] = []
        # Idleness counts from here: admission and on_connect (a backend call, say) are not
        # the peer's silence.
        self._last_inbound = time.monotonic()
        async with anyio.create_task_group() as tg:
            self._task_group = tg
            # The writer task starts when first needed: frames a socket can take at once are
            # sent by whoever offers them (the eager send), so most connections never need one.
            # Frames go under Starlette's pass-through send wrappers (see rtkit._passthrough).
            self._frame_send = unwrap_send(self.send)
            self.outbox.attach(
                self._frame_send, functools.partial(tg.start_soon, self._write, tg.cancel_scope)
            )
            if self._closing.stage is Stage.CLOSING:  # asked for before the task group existed
                self._arm_close_deadline()
            limits = self.limits
            if limits.idle_timeout or limits.heartbeat_interval:
                self._start_watch()
            # Otherwise the watchdog only guards against stalled handlers: it starts with the
            # first handler, so a connection that never sends costs no task for it.
            # The receive loop runs in a task of its own. Every frame resumes the task that
            # waits for it, through every coroutine on that task's stack: here that is the
            # loop and the server's receive, not the whole app stack above this endpoint
            # (the server's protocol, middleware, routers, mounts), which this task holds.
            tg.start_soon(self._receive_loop, websocket, outcome, tg.cancel_scope)
        self.outbox.detach()
        self._task_group = None
        closing = self._closing
        result = outcome[0] if outcome else closing.ended_with
        if isinstance(result, Exception):
            return await self._fail("a handler", result)
        closing.peer_left(result)  # unless the server's close ended it first
        return closing.ended_with

    async def _write(self, scope: anyio.CancelScope) -> None:
        try:
            code, _ = await self.outbox.drain(self._frame_send)
            self._closing.sent(code)
        except (OSError, WebSocketDisconnect):
            pass  # the peer is gone; the receive loop learns it from the server
        except RuntimeError as exc:
            # The server closed the socket itself (a keepalive timeout, say) and refuses more
            # frames; wsproto says so with a RuntimeError rather than ClientDisconnected.
            logger.debug("%s: the server refused a frame: %s", type(self).__name__, exc)
        finally:
            scope.cancel()

    def _request_close(self, code: int, reason: str) -> None:
        """Close after what is queued; if the peer does not take it in time, let it go."""
        if self._closing.start(code, reason, time.monotonic()):
            self.outbox.close(code, reason)
            self._arm_close_deadline()

    def _on_overflow(self) -> None:
        # The outbox closes the socket itself (1013); the deadline is the endpoint's.
        if self._closing.start(CloseCode.TRY_AGAIN_LATER, "slow consumer", time.monotonic()):
            self._arm_close_deadline()

    def _arm_close_deadline(self) -> None:
        if self._task_group is not None:  # else _serve arms it when it starts
            self._task_group.start_soon(self._enforce_close)

    async def _enforce_close(self) -> None:
        # A peer that stopped reading blocks the writer inside `send`, so its close frame can
        # never go out: after the grace period the connection is ended without it. What stays
        # buffered is bounded by the server's transport buffer.
        closing = self._closing
        while closing.deadline is not None:
            await anyio.sleep(max(0.0, closing.deadline - time.monotonic()))
            if closing.expire(time.monotonic()) and self._task_group is not None:
                self._task_group.cancel_scope.cancel()

    def _start_watch(self) -> None:
        if not self._watching and self._task_group is not None:
            self._watching = True
            self._task_group.start_soon(self._watch)

    async def _watch(self) -> None:
        """Idle timeout, heartbeats, and rescuing the receive loop from a slow handler."""
        monotonic = time.monotonic
        watchdog = Watchdog(self.limits, now=monotonic())
        while True:
            now = monotonic()
            tick = watchdog.tick(
                now,
                last_inbound=self._last_inbound,
                handling_since=self._handling_since,
                reading_taken_over=self._inbox is not None,
            )
            if tick.close_idle:
                self._request_close(CloseCode.GOING_AWAY, "idle timeout")
                return
            if tick.heartbeat:
                self.queue_frame(_HEARTBEAT)
            if tick.take_over_reading:
                self._take_over_receiving()
            if tick.wake_at is None:
                return
            await anyio.sleep(max(0.0, tick.wake_at - now))

    def _take_over_receiving(self) -> None:
        # A handler has been running for a while. The server stops reading the socket while a
        # received frame waits for the app, so a pong from the client would go unread and a
        # healthy peer be killed for a ping timeout: from now on a task of its own keeps
        # reading into a bounded inbox while the handlers catch up.
        if self._task_group is not None:
            self._inbox = Inbox(self.limits.inbox_max_messages)
            self._task_group.start_soon(self._pump, self._inbox)

    async def _pump(self, inbox: Inbox) -> None:
        receive = self.receive
        while True:
            await inbox.wait_for_room()
            message = await receive()
            self._last_inbound = time.monotonic()
            inbox.put(message)
            if message["type"] == "websocket.disconnect":
                if self._handling_since is not None and self._task_group is not None:
                    # The peer has gone while a handler is still running (this task exists
                    # because one ran for long): its answer has nobody to go to, and waiting
                    # for it would hold the connection, its channels and its counts for as
                    # long as it hangs. The connection ends now; on_disconnect runs as usual.
                    self._closing.peer_left(int(message.get("code", CloseCode.NO_STATUS)))
                    self._task_group.cancel_scope.cancel()
                return

    async def _receive_loop(
        self, websocket: WebSocket, outcome: list[int | Exception], scope: anyio.CancelScope
    ) -> None:
        """Read, guard and dispatch frames until the peer leaves; record how it ended.

        ``outcome`` gets the close code, or the exception that escaped user code. (The loop
        and its error handling are one coroutine: each frame resumes every coroutine on this
        task's stack, so a wrapper would cost a level per frame.)
        """
        try:
            receive = self.receive
            route = None if self._custom_on_receive else self._routes
            metrics, outbox = self.metrics, self.outbox
            monotonic = time.monotonic
            codec = self._codec
            decode = codec.decoder(self.wire) if codec is not None else None
            guard = FrameGuard(self.limits, self.wire, decode, now=monotonic())
            check = guard.check
            while True:
                inbox = self._inbox
                message = await receive() if inbox is None else await inbox.get()
                if message["type"] != "websocket.receive":
                    if message["type"] == "websocket.disconnect":
                        outcome.append(int(message.get("code") or CloseCode.NORMAL))
                        return
                    continue
                metrics.messages_in += 1
                self._last_inbound = now = monotonic()
                if outbox.closing:
                    continue  # closing: what the peer still sends is not served
                data = check(message, now)
                if data is REFUSED:
                    self._answer(guard.refusal)
                    continue
                self._handling_since = now
                if not self._watching and self.limits.stall_check_interval is not None:
                    self._start_watch()
                try:
                    handler = route.get(type(data)) if route is not None else None
                    if handler is not None:
                        await handler(self, websocket, data)
                    else:
                        await self.on_receive(websocket, data)
                except BackendUnavailableError as exc:
                    # The request could not be carried out now; the client may retry it.
                    self.queue_error(ErrorCode.UNAVAILABLE, str(exc), ref=getattr(data, "ref", None))
                finally:
                    self._handling_since = None
        except WebSocketDisconnect as exc:  # user code sent to a socket that had gone
            outcome.append(exc.code)
        except Exception as exc:  # the one boundary: a fault in user code, or the peer gone
            outcome.append(CloseCode.ABNORMAL if _peer_gone(exc) else exc)
        finally:
            scope.cancel()

    def _answer(self, refusal: Reply | Close | None) -> None:
        """Carry out the guard's answer to a refused frame: an error frame, or a close."""
        if isinstance(refusal, Reply):
            self.queue_error(refusal.code, refusal.detail, ref=refusal.ref)
        elif refusal is not None:
            self._request_close(refusal.code, refusal.reason)

    async def _unavailable(self, websocket: WebSocket) -> int:
        """Turn away a connection the backend cannot serve now: 503, or close 1013."""
        if websocket.application_state == WebSocketState.CONNECTING:
            await self._refuse(Refusal("unavailable", 503, "backend unavailable"))
        elif not self._closing.close_sent:
            with contextlib.suppress(OSError, RuntimeError):
                await self.send(
                    {
                        "type": "websocket.close",
                        "code": CloseCode.TRY_AGAIN_LATER,
                        "reason": "backend unavailable",
                    }
                )
        return CloseCode.TRY_AGAIN_LATER

    async def _fail(self, where: str, exc: BaseException | None = None) -> int:
        """Log a fault in user code and close the socket with 1011."""
        logger.error(
            "%s: unhandled exception in %s; closing the socket with 1011",
            type(self).__name__,
            where,
            exc_info=exc if exc is not None else True,
        )
        state = self.websocket.application_state
        if state != WebSocketState.DISCONNECTED and not self._closing.close_sent:
            with contextlib.suppress(OSError, RuntimeError):  # the peer may be gone already
                await self.send({"type": "websocket.close", "code": CloseCode.INTERNAL_ERROR, "reason": ""})
        return CloseCode.INTERNAL_ERROR

    async def _cleanup(self, websocket: WebSocket, close_code: int) -> None:
        if self._admitted:
            self._admitted = False
            self.metrics.connections_open -= 1
            counted, self._counted_principal = self._counted_principal, None
            if counted is not None:
                self.metrics.open_by_principal[counted] -= 1
                if self.metrics.open_by_principal[counted] <= 0:
                    del self.metrics.open_by_principal[counted]
        try:
            with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True) as scope:
                try:
                    await self.on_disconnect(websocket, close_code)
                except Exception:
                    logger.exception("%s: unhandled exception in on_disconnect", type(self).__name__)
            if scope.cancelled_caught:
                logger.warning(
                    "%s: on_disconnect overran %ss and was cancelled", type(self).__name__, _CLEANUP_TIMEOUT
                )
        finally:
            # A deadline of its own: an on_disconnect that used up the first must not leave the
            # connection in its channels. (The hub drops it from every channel before it awaits
            # the backend, so even this deadline cannot leave it behind.)
            if self._hub is not None:
                with anyio.move_on_after(_CLEANUP_TIMEOUT, shield=True):
                    await self._hub.unsubscribe_all(self)
