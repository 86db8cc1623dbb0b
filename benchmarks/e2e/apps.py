"""The applications the end-to-end benchmarks serve: rtkit and three baselines.

Each serves ``/ws/echo`` and ``/ws/chat/{room}``, with the same work done each app's own way:

- echo: a ``say`` frame, ``{"type":"say","text":...,"ref":...}``, is decoded and checked (a
  string ``text``, an optional integer ``ref``) and sent back, encoded again;
- chat: a ``say`` frame becomes a ``message`` frame, ``{"type":"message","room":...,"user":...,
  "text":...,"ts":...}``, sent to every member of the room, the sender too.

The contenders:

- ``rtkit``: a typed echo endpoint as users write one (``inbound = Say``, ``on_say`` sends the
  message back) and ``ChatEndpoint``, on a ``RealtimeRouter`` mounted in Starlette (as the demo
  app does), memory hub;
- ``rtkit-router``: the same endpoints with the ``RealtimeRouter`` itself as the server's app
  (no host app, so no middleware wraps ``send``); measured in the healthy broadcasts only;
- ``rtkit-fast``, ``raw-asgi-fast``: rtkit and the raw ASGI app served on rtkit's uvicorn
  protocol (``rtkit.uvicorn_protocol``, what ``rtkit serve`` runs) instead of uvicorn's
  ``websockets-sansio``; measured in echo and the healthy broadcasts;
- ``raw-asgi``: a framework-free ASGI app, the floor of the stack: msgspec decode, encode once,
  one shared event dict sent to each member in turn;
- ``starlette``: ``WebSocketEndpoint`` classes with stdlib ``json`` and a global set of sockets;
- ``fastapi-tutorial``: FastAPI's documented ``ConnectionManager`` with pydantic models and the
  ``for connection in ...: await connection.send_text(...)`` loop.

The baselines do not survive a peer that stops reading: their loops wait on it. That is the
point of the stalled-member benchmark.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import Any, Literal

import msgspec
from starlette.applications import Starlette
from starlette.endpoints import WebSocketEndpoint
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from rtkit import ChatEndpoint, RealtimeRouter
from rtkit._types import ASGIApp, Receive, Scope, Send
from rtkit.endpoint import RealtimeEndpoint
from rtkit.limits import Limits
from rtkit.messages import Say

__all__ = ["APPS", "FAST_PROTOCOL", "STOCK_PROTOCOL", "TypedEcho", "build", "rtkit_app", "ws_protocol"]


# -- raw ASGI ---------------------------------------------------------------------------------


class _RawSay(msgspec.Struct, tag_field="type", tag="say", omit_defaults=True):
    text: str
    ref: int | None = None


class _RawMessage(msgspec.Struct, tag_field="type", tag="message"):
    room: str
    user: str
    text: str
    ts: float


def _raw_asgi() -> ASGIApp:
    rooms: dict[str, set[Send]] = {}
    decode = msgspec.json.Decoder(_RawSay).decode
    encode = msgspec.json.Encoder().encode

    async def echo(receive: Receive, send: Send) -> None:
        while True:
            message = await receive()
            if message["type"] == "websocket.receive":
                say = decode(message["text"])
                await send({"type": "websocket.send", "text": encode(say).decode()})
            elif message["type"] == "websocket.disconnect":
                return

    async def chat(scope: Scope, receive: Receive, send: Send, room: str) -> None:
        user = scope["query_string"].decode().partition("name=")[2] or "guest"
        members = rooms.setdefault(room, set())
        members.add(send)
        try:
            while True:
                message = await receive()
                if message["type"] == "websocket.receive":
                    say = decode(message["text"])
                    out = _RawMessage(room=room, user=user, text=say.text, ts=time.time())
                    event = {"type": "websocket.send", "text": encode(out).decode()}
                    for member in list(members):
                        await member(event)
                elif message["type"] == "websocket.disconnect":
                    return
        finally:
            members.discard(send)

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                elif message["type"] == "lifespan.shutdown":
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        if scope["type"] != "websocket":
            return
        path: str = scope["path"]
        if (await receive())["type"] != "websocket.connect":
            return
        if path == "/ws/echo":
            await send({"type": "websocket.accept"})
            await echo(receive, send)
        elif path.startswith("/ws/chat/"):
            await send({"type": "websocket.accept"})
            await chat(scope, receive, send, path.removeprefix("/ws/chat/"))
        else:
            await send({"type": "websocket.close", "code": 1008})

    return app


# -- plain Starlette --------------------------------------------------------------------------


def _starlette() -> ASGIApp:
    rooms: dict[str, set[WebSocket]] = {}

    class Echo(WebSocketEndpoint):
        encoding = "text"

        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            say = json.loads(data)
            ref = say.get("ref")
            if say.get("type") != "say" or not isinstance(say.get("text"), str):
                raise ValueError("not a say frame")
            if ref is not None and not isinstance(ref, int):
                raise ValueError("ref must be an integer")
            await websocket.send_text(json.dumps(say, separators=(",", ":")))

    class Chat(WebSocketEndpoint):
        encoding = "text"

        async def on_connect(self, websocket: WebSocket) -> None:
            await websocket.accept()
            rooms.setdefault(websocket.path_params["room"], set()).add(websocket)

        async def on_receive(self, websocket: WebSocket, data: Any) -> None:
            say = json.loads(data)
            # The same checks as the echo above and the other contenders' chat.
            if say.get("type") != "say" or not isinstance(say.get("text"), str):
                raise ValueError("not a say frame")
            room = websocket.path_params["room"]
            text = json.dumps(
                {
                    "type": "message",
                    "room": room,
                    "user": websocket.query_params.get("name", "guest"),
                    "text": say["text"],
                    "ts": time.time(),
                },
                separators=(",", ":"),
            )
            for member in list(rooms[room]):
                await member.send_text(text)

        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            rooms.get(websocket.path_params["room"], set()).discard(websocket)

    return Starlette(routes=[WebSocketRoute("/ws/echo", Echo), WebSocketRoute("/ws/chat/{room}", Chat)])


# -- the FastAPI tutorial ---------------------------------------------------------------------


def _fastapi_tutorial() -> ASGIApp:
    import pydantic
    from fastapi import FastAPI, WebSocketDisconnect

    class Say(pydantic.BaseModel):
        type: Literal["say"]
        text: str
        ref: int | None = None

    class ChatMessage(pydantic.BaseModel):
        type: Literal["message"] = "message"
        room: str
        user: str
        text: str
        ts: float

    class ConnectionManager:
        def __init__(self) -> None:
            self.active_connections: dict[str, list[WebSocket]] = {}

        async def connect(self, room: str, websocket: WebSocket) -> None:
            await websocket.accept()
            self.active_connections.setdefault(room, []).append(websocket)

        def disconnect(self, room: str, websocket: WebSocket) -> None:
            self.active_connections[room].remove(websocket)

        async def broadcast(self, room: str, message: str) -> None:
            for connection in self.active_connections[room]:
                await connection.send_text(message)

    manager = ConnectionManager()
    app = FastAPI()

    @app.websocket("/ws/echo")
    async def echo(websocket: WebSocket) -> None:
        await websocket.accept()
        try:
            while True:
                say = Say.model_validate_json(await websocket.receive_text())
                await websocket.send_text(say.model_dump_json(exclude_none=True))
        except WebSocketDisconnect:
            pass

    @app.websocket("/ws/chat/{room}")
    async def chat(websocket: WebSocket, room: str, name: str = "guest") -> None:
        await manager.connect(room, websocket)
        try:
            while True:
                say = Say.model_validate_json(await websocket.receive_text())
                out = ChatMessage(room=room, user=name, text=say.text, ts=time.time())
                await manager.broadcast(room, out.model_dump_json())
        except WebSocketDisconnect:
            manager.disconnect(room, websocket)

    return app


# -- rtkit ------------------------------------------------------------------------------------


class TypedEcho(RealtimeEndpoint):
    """A typed echo as a user writes it: ``say`` frames, validated, sent back."""

    inbound = Say

    async def on_say(self, websocket: WebSocket, message: Say) -> None:
        """Send the message back to its sender."""
        self.queue_message(message)


def _rtkit_router(hub: Any = None) -> RealtimeRouter:
    """The two endpoints on a ``RealtimeRouter``, with the limits ``rtkit_app`` explains."""
    limits = Limits(rate=None, max_connections=None)
    router = RealtimeRouter(hub=hub)
    router.add("/echo", TypedEcho, name="echo", limits=limits)
    router.add("/chat/{room}", ChatEndpoint, name="chat", limits=limits)
    return router


def rtkit_app(hub: Any = None) -> ASGIApp:
    """rtkit's typed echo and ``ChatEndpoint`` on a ``RealtimeRouter``, mounted as users do.

    The limits are rtkit's defaults except the per-connection rate limit and the connection cap:
    they guard a public server against abusive peers (50 frames/s per socket by default), a
    load test exceeds them on purpose, and the baselines have no such guard.

    Args:
        hub: an ``rtkit.Hub`` (the Redis benchmark passes one); a memory hub by default.
    """
    from starlette.routing import Mount

    router = _rtkit_router(hub)
    return Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan)


def _rtkit() -> ASGIApp:
    return rtkit_app()


def _rtkit_served_bare() -> ASGIApp:
    """The same endpoints with the ``RealtimeRouter`` itself as the server's app, no host app.

    A host Starlette app's exception middleware wraps every ``send`` of what it mounts in a
    closure of its own, one per connection, which a broadcast then calls member by member.
    """
    return _under_prefix(_rtkit_router(), "/ws")


def _under_prefix(app: ASGIApp, prefix: str) -> ASGIApp:
    """Serve ``app`` under ``prefix`` (as ``root_path``, as a Mount does) without wrapping ``send``."""

    async def serve(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "root_path": scope.get("root_path", "") + prefix}
        await app(scope, receive, send)

    return serve


APPS: dict[str, Callable[[], ASGIApp]] = {
    "rtkit": _rtkit,
    "rtkit-fast": _rtkit,
    "raw-asgi-fast": _raw_asgi,
    "rtkit-router": _rtkit_served_bare,
    "raw-asgi": _raw_asgi,
    "starlette": _starlette,
    "fastapi-tutorial": _fastapi_tutorial,
}


STOCK_PROTOCOL = "websockets-sansio"
FAST_PROTOCOL = "rtkit.uvicorn_protocol:FastWebSocketProtocol"
_PROTOCOLS = {"rtkit-fast": FAST_PROTOCOL, "raw-asgi-fast": FAST_PROTOCOL}


def ws_protocol(name: str) -> str:
    """uvicorn's ``ws`` option for contender ``name``: its own protocol, or uvicorn's."""
    return _PROTOCOLS.get(name, STOCK_PROTOCOL)


def build(name: str) -> ASGIApp:
    """The application of contender ``name``."""
    try:
        factory = APPS[name]
    except KeyError:
        raise ValueError(f"unknown app {name!r}; choose from {sorted(APPS)}") from None
    return factory()
