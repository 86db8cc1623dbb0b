"""Frames go under Starlette's pass-through ``send`` wrappers, never under anybody else's."""

from __future__ import annotations

from typing import Any, ClassVar

import anyio
import pytest
from fastapi import FastAPI
from starlette._exception_handler import wrap_app_handling_exceptions
from starlette.applications import Starlette
from starlette.middleware import Middleware
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from rtkit import EchoEndpoint, RealtimeRouter, TopicEndpoint
from rtkit._passthrough import _SENDER, unwrap_send, write_now_of
from rtkit._types import ASGIApp, Message, Receive, Scope, Send


async def _nothing(message: Message) -> None:
    pass


def starlette_wrapped(send: Send, levels: int = 1) -> Send:
    """``send`` as Starlette's exception handling hands it to a mounted app, ``levels`` deep."""
    seen: list[Send] = []

    async def app(scope: Scope, receive: Receive, inner: Send) -> None:
        seen.append(inner)

    scope: dict[str, Any] = {"type": "websocket", "path": "/", "headers": [], "query_string": b""}
    for _ in range(levels):
        wrapped = wrap_app_handling_exceptions(app, WebSocket(scope, _receive_nothing, send))
        anyio.run(wrapped, scope, _receive_nothing, send)
        send = seen[-1]
    return send


async def _receive_nothing() -> Message:
    raise AssertionError("not called")  # pragma: no cover


def test_the_installed_starlettes_wrapper_has_the_shape_that_is_seen_through() -> None:
    # When Starlette changes it, this fails and the wrapper is simply called, as any other.
    assert _SENDER is not None


@pytest.mark.parametrize("levels", [1, 2])
def test_starlettes_wrappers_are_seen_through(levels: int) -> None:
    wrapped = starlette_wrapped(_nothing, levels)
    assert wrapped is not _nothing
    assert unwrap_send(wrapped) is _nothing


def test_other_wrappers_are_kept_even_when_they_look_alike() -> None:
    response_started = False

    async def sender(message: Message) -> None:  # the same names, another function
        nonlocal response_started
        if message["type"] == "http.response.start":
            response_started = True
        await _nothing(message)

    assert unwrap_send(sender) is sender
    assert unwrap_send(_nothing) is _nothing
    # A user's wrapper under Starlette's: seen through down to it, and no further.
    assert unwrap_send(starlette_wrapped(sender)) is sender


class _Connection:
    def write_now(self, message: Message) -> bool:  # pragma: no cover - never called here
        return True

    async def send(self, message: Message) -> None:  # pragma: no cover - never called here
        pass

    _writes_now_for = send


def test_write_now_is_found_behind_its_own_send_only() -> None:
    connection = _Connection()
    assert write_now_of(connection.send) == connection.write_now
    # Under Starlette's wrapper it is found once the wrapper is seen through; not through any
    # other callable, nor for another method of the same object.
    wrapped = starlette_wrapped(connection.send)
    assert write_now_of(wrapped) is None
    assert write_now_of(unwrap_send(wrapped)) == connection.write_now
    assert write_now_of(_nothing) is None
    assert write_now_of(connection.write_now) is None  # type: ignore[arg-type]


class Recorder:
    """A user's middleware that records every message sent through it."""

    def __init__(self, app: ASGIApp, sent: list[Message]) -> None:
        self.app = app
        self.sent = sent

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def recording(message: Message) -> None:
            self.sent.append(message)
            await send(message)

        await self.app(scope, receive, recording)


class WitnessEcho(EchoEndpoint):
    """An echo that notes which ``send`` its frames go to."""

    frame_sends: ClassVar[list[str]] = []

    async def on_receive(self, websocket: WebSocket, data: str | bytes) -> None:
        WitnessEcho.frame_sends.append(self._frame_send.__code__.co_name)
        await super().on_receive(websocket, data)


def _router() -> RealtimeRouter:
    router = RealtimeRouter()
    router.add("/echo", WitnessEcho)
    router.add("/topics", TopicEndpoint)
    return router


@pytest.mark.parametrize("host", ["starlette", "fastapi"])
def test_a_users_middleware_still_sees_every_frame(host: str) -> None:
    sent: list[Message] = []
    router = _router()
    middleware = [Middleware(Recorder, sent=sent)]
    app: ASGIApp
    if host == "starlette":
        app = Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan, middleware=middleware)
    else:
        fastapi = FastAPI(lifespan=router.lifespan, middleware=middleware)
        fastapi.mount("/ws", router)
        app = fastapi
    with TestClient(app) as client:
        with client.websocket_connect("/ws/echo") as ws:
            ws.send_text("one")
            assert ws.receive_text() == "one"
        with client.websocket_connect("/ws/topics") as ws:
            ws.send_json({"type": "subscribe", "topic": "news", "ref": 1})
            assert ws.receive_json()["type"] == "subscribed"
            ws.send_json({"type": "publish", "topic": "news", "data": 7, "ref": 2})
            assert ws.receive_json()["type"] in {"event", "published"}
            assert ws.receive_json()["type"] in {"event", "published"}
    # Starlette's wrapper is skipped: frames go straight to the user's middleware.
    assert WitnessEcho.frame_sends[-1] == "recording"
    texts = [str(message.get("text")) for message in sent if message["type"] == "websocket.send"]
    assert texts[0] == "one"
    assert sum('"subscribed"' in text for text in texts) == 1
    assert sum('"event"' in text for text in texts) == 1
