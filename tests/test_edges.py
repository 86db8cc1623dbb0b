"""Edge cases of the endpoint and the hub that the main suites do not reach."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

import anyio
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtkit import BackendUnavailableError, Hub, MemoryBackend, RealtimeEndpoint, RealtimeRouter
from rtkit._types import Message
from rtkit.codec import encode
from tests.asgi import scripted_receive, websocket_scope
from tests.test_hub import Recorder

log: list[Any] = []


class Ping(msgspec.Struct, tag="ping"):
    pass


class Gone(msgspec.Struct, tag="gone"):
    how: str


class Auditing(RealtimeEndpoint):
    """Overrides on_receive and hands on to the default routing."""

    inbound = Ping | Gone

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        log.append(type(data).__name__)
        await super().on_receive(websocket, data)

    async def on_ping(self, websocket: WebSocket, message: Ping) -> None:
        self.queue_message({"type": "pong"})

    async def on_gone(self, websocket: WebSocket, message: Gone) -> None:
        # User code that writes to the socket directly, after the peer went away.
        if message.how == "disconnect":
            raise WebSocketDisconnect(4001)
        raise ConnectionResetError("peer reset")

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        log.append(("disconnect", close_code))
        raise RuntimeError("cleanup fault")


class SubscribesFirst(RealtimeEndpoint):
    """Subscribes before accepting: a backend outage turns it away with 503."""

    async def on_connect(self, websocket: WebSocket) -> None:
        await self.subscribe("c")
        await self.accept()


class Down(MemoryBackend):
    async def subscribe(self, channel: str) -> None:
        raise BackendUnavailableError("down")


@pytest.fixture
def client() -> Iterator[TestClient]:
    log.clear()
    router = RealtimeRouter()
    router.add("/audit", Auditing)
    down = RealtimeRouter(hub=Hub(Down()))
    down.add("/first", SubscribesFirst)
    app = Starlette(routes=[*router.routes, *down.routes], lifespan=router.lifespan)

    with TestClient(app) as test_client:
        assert test_client.portal is not None
        test_client.portal.call(down.hub.startup)
        yield test_client
        test_client.portal.call(down.hub.shutdown)


def test_on_receive_overrides_can_hand_on_to_the_routing(client: TestClient) -> None:
    with client.websocket_connect("/audit") as ws:
        ws.send_json({"type": "ping"})
        assert ws.receive_json() == {"type": "pong"}
    assert log[0] == "Ping"


@pytest.mark.anyio
@pytest.mark.parametrize(("how", "code"), [("disconnect", 4001), ("reset", 1006)])
async def test_user_code_meeting_a_vanished_peer_is_a_disconnect_not_a_fault(
    caplog: pytest.LogCaptureFixture, how: str, code: int
) -> None:
    log.clear()

    async def send(message: Message) -> None:
        pass

    with caplog.at_level(logging.ERROR, logger="rtkit"), anyio.fail_after(5):
        await Auditing(websocket_scope(), scripted_receive(f'{{"type": "gone", "how": "{how}"}}'), send)
    assert ("disconnect", code) in log
    # Only the fault in on_disconnect is logged, with its traceback: the disconnect is not.
    assert [r.getMessage() for r in caplog.records] == ["Auditing: unhandled exception in on_disconnect"]


def test_the_json_subprotocol_is_accepted_when_offered(client: TestClient) -> None:
    with client.websocket_connect("/audit", subprotocols=["rtkit.json"]) as ws:
        assert ws.accepted_subprotocol == "rtkit.json"


def test_a_backend_outage_before_accept_answers_503(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/first"):
        pass
    assert (refused.value.status_code, refused.value.text) == (503, "backend unavailable")


def test_the_default_gap_notice_names_the_channel() -> None:
    router = RealtimeRouter()

    class Plain(RealtimeEndpoint):
        async def on_connect(self, websocket: WebSocket) -> None:
            await self.accept()
            await self.subscribe("raw-channel")

    router.add("/plain", Plain)
    app = Starlette(routes=router.routes, lifespan=router.lifespan)
    with TestClient(app) as client, client.websocket_connect("/plain") as ws:
        assert client.portal is not None
        client.portal.call(router.hub.gap, "raw-channel", 4)
        assert ws.receive_json() == {"type": "gap", "missed": 4, "channel": "raw-channel"}


def test_msgpack_encoding() -> None:
    assert msgspec.msgpack.decode(encode({"a": [1, 2]}, "msgpack")) == {"a": [1, 2]}


@pytest.mark.anyio
async def test_a_message_for_a_channel_without_local_members_is_counted_and_ignored() -> None:
    async with Hub() as hub:
        hub.deliver("nobody", bytes(8) + b"{}")
        assert hub.metrics.received == 1
        assert hub.metrics.delivered == 0


@pytest.mark.anyio
async def test_a_subscribe_racing_the_last_unsubscribe_keeps_the_channel() -> None:
    release = anyio.Event()

    class SlowUnsubscribe(MemoryBackend):
        async def unsubscribe(self, channel: str) -> None:
            await release.wait()
            await super().unsubscribe(channel)

    async with Hub(SlowUnsubscribe()) as hub:
        first, second = Recorder(), Recorder()
        await hub.subscribe("c", first)
        async with anyio.create_task_group() as tg:
            tg.start_soon(hub.unsubscribe, "c", first)  # the last member leaves...
            await anyio.wait_all_tasks_blocked()
            tg.start_soon(hub.subscribe, "c", second)  # ...while another arrives
            await anyio.wait_all_tasks_blocked()
            release.set()
        await hub.publish("c", "still here")
        assert second.decoded() == ["still here"]
        assert hub.channel_count == 1


def test_the_redis_backend_is_reached_lazily_from_the_package() -> None:
    import rtkit
    import rtkit.backends
    from rtkit.backends.redis import RedisBackend

    assert rtkit.RedisBackend is RedisBackend
    assert rtkit.backends.RedisBackend is RedisBackend
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = rtkit.Nope
    with pytest.raises(AttributeError, match="no attribute 'Nope'"):
        _ = rtkit.backends.Nope
