"""How a connection ends when things go wrong around it: a peer that leaves while a handler
hangs, errors raised in handlers, refusals to a peer that has gone, a slow ``on_connect``.

The peer is scripted at the ASGI level: each test decides exactly what the server receives
and records what it sends.
"""

from __future__ import annotations

import logging
from typing import Any

import anyio
import msgspec
import pytest
from starlette.websockets import WebSocket
from uvicorn.protocols.utils import ClientDisconnected

from rtkit import (
    BackendUnavailableError,
    ChatEndpoint,
    Hub,
    Limits,
    MemoryBackend,
    RealtimeEndpoint,
    TopicEndpoint,
)
from rtkit._types import Message
from rtkit.auth import Authenticator, Principal

pytestmark = pytest.mark.anyio


class Work(msgspec.Struct, tag="work"):
    what: str = "hang"


class ScriptedPeer:
    """An ASGI peer: hands out ``script`` in order, then waits; records what the app sends."""

    def __init__(self, *script: dict[str, Any]) -> None:
        self.script = list(script)
        self.sent: list[Message] = []
        self.changed = anyio.Event()

    async def receive(self) -> dict[str, Any]:
        if self.script:
            return self.script.pop(0)
        await anyio.sleep_forever()
        raise AssertionError("unreachable")  # pragma: no cover

    async def send(self, message: Message) -> None:
        self.sent.append(message)
        self.changed.set()
        self.changed = anyio.Event()

    def closes(self) -> list[int]:
        return [m["code"] for m in self.sent if m["type"] == "websocket.close"]


def scope(path: str = "/", query: bytes = b"", **path_params: str) -> dict[str, Any]:
    return {
        "type": "websocket",
        "path": path,
        "headers": [],
        "query_string": query,
        "subprotocols": [],
        "path_params": path_params,
    }


CONNECT = {"type": "websocket.connect"}


def frame(text: str) -> dict[str, Any]:
    return {"type": "websocket.receive", "text": text}


class Worker(RealtimeEndpoint):
    """Hangs, or raises the error its message names; says when on_disconnect ran."""

    inbound = Work
    limits = Limits(rate=None, stall_check_interval=0.05)
    left: anyio.Event
    left_with: int | None = None

    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept()
        await self.subscribe("room")

    async def on_work(self, websocket: WebSocket, message: Work) -> None:
        if message.what == "hang":
            await anyio.Event().wait()  # a backend call that never answers, say
        if message.what == "timeout":
            raise TimeoutError("the handler's own deadline passed")
        if message.what == "reset":
            raise ConnectionResetError("the peer reset the connection")

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        type(self).left_with = close_code
        type(self).left.set()


@pytest.fixture
def worker() -> type[Worker]:
    Worker.left = anyio.Event()
    Worker.left_with = None
    return Worker


async def test_a_peer_that_leaves_while_a_handler_hangs_ends_the_connection(worker: type[Worker]) -> None:
    async with Hub() as hub:
        peer = ScriptedPeer(CONNECT, frame('{"type":"work"}'), {"type": "websocket.disconnect", "code": 1001})
        with anyio.fail_after(5):
            await worker(scope(), peer.receive, peer.send, hub=hub)  # returns: nothing held
        assert worker.left.is_set()
        assert worker.left_with == 1001
        assert hub.metrics.connections_open == 0
        assert hub.subscriber_count("room") == 0
        assert hub.metrics.closes[1001] == 1


@pytest.mark.parametrize("anyio_backend", ["asyncio"])  # uvicorn's error, with the asyncio loop
async def test_a_timeout_in_a_handler_is_a_fault_not_a_peer_that_left(
    worker: type[Worker], caplog: pytest.LogCaptureFixture
) -> None:
    async with Hub() as hub:
        peer = ScriptedPeer(CONNECT, frame('{"type":"work","what":"timeout"}'))
        with anyio.fail_after(5), caplog.at_level(logging.ERROR, logger="rtkit"):
            await worker(scope(), peer.receive, peer.send, hub=hub)
        assert peer.closes() == [1011]
        assert "unhandled exception in a handler" in caplog.text
        assert hub.metrics.closes[1011] == 1
        # A send error that means the peer has gone stays what it was: no fault, no close.
        caplog.clear()
        peer = ScriptedPeer(CONNECT, frame('{"type":"work","what":"reset"}'))
        with anyio.fail_after(5), caplog.at_level(logging.ERROR, logger="rtkit"):
            await worker(scope(), peer.receive, peer.send, hub=hub)
        assert peer.closes() == []
        assert "unhandled exception" not in caplog.text
        assert hub.metrics.closes[1006] == 1


class SlowStart(RealtimeEndpoint):
    """Accepts, then takes longer than its idle timeout to finish on_connect."""

    inbound = Work
    limits = Limits(rate=None, idle_timeout=0.2)

    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept()
        await anyio.sleep(0.4)  # joining a room on a remote backend, say

    async def on_work(self, websocket: WebSocket, message: Work) -> None:
        self.queue_message({"type": "done"})
        await self.close(1000)


async def test_idleness_counts_from_the_end_of_on_connect() -> None:
    async with Hub() as hub:
        peer = ScriptedPeer(CONNECT, frame('{"type":"work","what":"ok"}'))
        with anyio.fail_after(5):
            await SlowStart(scope(), peer.receive, peer.send, hub=hub)
        assert {"type": "websocket.send", "text": '{"type":"done"}'} in peer.sent
        assert peer.closes() == [1000]  # its own close, not 1001 for idleness


class Nobody(Authenticator):
    async def authenticate(self, websocket: Any) -> Principal | None:
        return None


async def _gone(message: Message) -> None:
    raise ClientDisconnected  # what uvicorn's send raises once the peer has left


async def _connect() -> dict[str, Any]:
    return CONNECT


@pytest.mark.parametrize("anyio_backend", ["asyncio"])
async def test_a_refusal_to_a_peer_that_has_gone_is_not_an_error(caplog: pytest.LogCaptureFixture) -> None:
    async with Hub() as hub:
        with anyio.fail_after(5), caplog.at_level(logging.ERROR, logger="rtkit"):
            # Refused by the authenticator: nothing escapes the app.
            await ChatEndpoint(scope(room="x"), _connect, _gone, hub=hub, authenticator=Nobody())
            # Refused by on_connect itself (a name too long): a refusal, not a fault.
            await ChatEndpoint(scope(query=b"name=" + b"n" * 100, room="x"), _connect, _gone, hub=hub)
        assert caplog.records == []
        assert hub.metrics.refused["auth"] == 1
        assert hub.metrics.refused["handshake"] == 1
        assert hub.metrics.closes[1011] == 0


async def test_a_refusal_in_on_connect_is_counted_with_its_own_code() -> None:
    class Custom(RealtimeEndpoint):
        async def on_connect(self, websocket: WebSocket) -> None:
            await self.close(4003, "not today")

    async with Hub() as hub:
        peer = ScriptedPeer(CONNECT)
        with anyio.fail_after(5):
            await Custom(scope(), peer.receive, peer.send, hub=hub)
        assert peer.closes() == [4003]
        assert hub.metrics.closes[4003] == 1
        assert hub.metrics.closes[1008] == 0


class Ann(Authenticator):
    async def authenticate(self, websocket: Any) -> Principal | None:
        return Principal(id="ann")


class Renames(RealtimeEndpoint):
    """User code that changes who the principal is after admission."""

    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept()
        self.principal = Principal(id="someone-else")
        await self.close(1000)


async def test_the_per_principal_count_goes_back_to_whom_it_was_charged() -> None:
    limits = Limits(max_connections_per_principal=1)
    async with Hub() as hub:
        peer = ScriptedPeer(CONNECT)
        with anyio.fail_after(5):
            await Renames(scope(), peer.receive, peer.send, hub=hub, limits=limits, authenticator=Ann())
        assert dict(hub.metrics.open_by_principal) == {}  # ann's count is back to none


class LetsGoOfNothing(MemoryBackend):
    """A backend that cannot release channels (Redis out of reach, say)."""

    async def unsubscribe(self, channel: str) -> None:
        raise BackendUnavailableError("redis: connection refused")


async def test_an_unsubscribe_the_backend_fails_still_frees_the_topics_place() -> None:
    class OneTopic(TopicEndpoint):
        limits = Limits(rate=None, max_topics=1)

    async with Hub(LetsGoOfNothing()) as hub:
        peer = ScriptedPeer(
            CONNECT,
            frame('{"type":"subscribe","topic":"a"}'),
            frame('{"type":"unsubscribe","topic":"a"}'),
            frame('{"type":"subscribe","topic":"b","ref":2}'),
        )

        async def serve() -> None:
            await OneTopic(scope(), peer.receive, peer.send, hub=hub)

        async with anyio.create_task_group() as tg:
            tg.start_soon(serve)
            with anyio.fail_after(5):
                while not any('"ref":2' in m.get("text", "") for m in peer.sent):
                    await peer.changed.wait()
            tg.cancel_scope.cancel()
        texts = [msgspec.json.decode(m["text"]) for m in peer.sent if m.get("text")]
        assert texts[-2]["code"] == "unavailable"  # the unsubscribe could not be confirmed
        assert texts[-1] == {"type": "subscribed", "topic": "b", "ref": 2}  # and a takes no place
