"""The ready handlers (echo, chat, topics) through Starlette's TestClient."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from anyio.from_thread import BlockingPortal
from starlette.applications import Starlette
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket

from rtkit import ChatEndpoint, EchoEndpoint, Hub, MemoryBackend, RealtimeRouter, TopicEndpoint


class QuietChat(ChatEndpoint):
    """A subclass that does not echo messages to their sender."""

    echo_to_sender: ClassVar[bool] = False


class StaffTopics(TopicEndpoint):
    """Topics of their own, beside the open ones on the same hub."""

    namespace = "staff"


class StaffChat(ChatEndpoint):
    """Rooms of their own, beside the open ones on the same hub."""

    namespace = "staff"


hub = Hub()


def build_app() -> Starlette:
    router = RealtimeRouter(hub=hub)
    router.add("/echo", EchoEndpoint)
    router.add("/chat/{room}", ChatEndpoint)
    router.add("/quiet/{room}", QuietChat)
    router.add("/topics", TopicEndpoint)
    router.add("/topics/{topic}", TopicEndpoint)
    router.add("/staff/topics/{topic}", StaffTopics)
    router.add("/staff/chat/{room}", StaffChat)
    return Starlette(routes=router.routes, lifespan=router.lifespan)


@pytest.fixture(params=["asyncio", "trio"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    with TestClient(build_app(), backend=request.param) as test_client:
        yield test_client


def portal(client: TestClient) -> BlockingPortal:
    """The client's event loop portal, to run app code (a publish) next to the sockets."""
    assert client.portal is not None
    return client.portal


def test_echo_returns_text_as_text_and_bytes_as_bytes(client: TestClient) -> None:
    with client.websocket_connect("/echo") as ws:
        ws.send_text("héllo {not json")
        assert ws.receive_text() == "héllo {not json"
        ws.send_bytes(b"\x00\xffbin")
        assert ws.receive_bytes() == b"\x00\xffbin"


def without_ts(message: dict[str, Any]) -> dict[str, Any]:
    assert isinstance(message.pop("ts"), float)
    return message


def test_chat_room_lifecycle(client: TestClient) -> None:
    with client.websocket_connect("/chat/lobby?name=ann") as ann:
        assert ann.receive_json() == {"type": "welcome", "room": "lobby", "user": "ann", "members": ["ann"]}
        with client.websocket_connect("/chat/lobby?name=bob") as bob:
            assert bob.receive_json() == {
                "type": "welcome",
                "room": "lobby",
                "user": "bob",
                "members": ["ann", "bob"],
            }
            assert ann.receive_json() == {"type": "joined", "room": "lobby", "user": "bob"}
            bob.send_json({"type": "say", "text": "hi all"})
            expected = {"type": "message", "room": "lobby", "user": "bob", "text": "hi all"}
            assert without_ts(ann.receive_json()) == expected
            assert without_ts(bob.receive_json()) == expected  # the sender too
            bob.send_json({"type": "say", "text": "with ref", "ref": "m2"})
            assert without_ts(bob.receive_json())["text"] == "with ref"
            assert bob.receive_json() == {"type": "said", "room": "lobby", "ref": "m2"}
            assert without_ts(ann.receive_json())["text"] == "with ref"
        assert ann.receive_json() == {"type": "left", "room": "lobby", "user": "bob"}
        # The left member is gone from presence: a newcomer sees only ann.
        with client.websocket_connect("/chat/lobby?name=cid") as cid:
            assert cid.receive_json()["members"] == ["ann", "cid"]


def test_rooms_are_isolated(client: TestClient) -> None:
    with (
        client.websocket_connect("/chat/a?name=ann") as ann,
        client.websocket_connect("/chat/b?name=bob") as bob,
    ):
        ann.receive_json()
        assert bob.receive_json()["members"] == ["bob"]
        ann.send_json({"type": "say", "text": "only a"})
        assert ann.receive_json()["text"] == "only a"
        bob.send_json({"type": "say", "text": "only b"})
        # bob's next frame is his own message: nothing from room a came first.
        assert bob.receive_json()["text"] == "only b"


def test_guest_names_and_the_name_limit(client: TestClient) -> None:
    with client.websocket_connect("/chat/lobby") as guest:
        welcome = guest.receive_json()
        assert welcome["user"].startswith("guest-")
        assert len(welcome["user"]) == 12
    # Refused before accept with the reason in the HTTP denial's body.
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(f"/chat/lobby?name={'x' * 65}"),
    ):
        pass
    assert (refused.value.status_code, refused.value.text) == (
        403,
        "name too long: at most 64 characters",
    )


def test_a_subclass_can_stop_echoing_to_the_sender(client: TestClient) -> None:
    with (
        client.websocket_connect("/quiet/r?name=ann") as ann,
        client.websocket_connect("/quiet/r?name=bob") as bob,
    ):
        ann.receive_json()
        bob.receive_json()
        ann.receive_json()  # joined bob
        bob.send_json({"type": "say", "text": "1", "ref": 1})
        assert bob.receive_json() == {"type": "said", "room": "r", "ref": 1}
        assert ann.receive_json()["text"] == "1"


def test_bad_chat_frames_get_error_frames(client: TestClient) -> None:
    with client.websocket_connect("/chat/lobby?name=ann") as ann:
        ann.receive_json()
        ann.send_json({"type": "say"})
        assert ann.receive_json() == {
            "type": "error",
            "code": "invalid_message",
            "detail": "Object missing required field `text`",
        }


def test_topic_subscribe_publish_unsubscribe(client: TestClient) -> None:
    with client.websocket_connect("/topics") as sub, client.websocket_connect("/topics") as pub:
        sub.send_json({"type": "subscribe", "topic": "news", "ref": "s1"})
        assert sub.receive_json() == {"type": "subscribed", "topic": "news", "ref": "s1"}
        pub.send_json({"type": "publish", "topic": "news", "data": {"n": 1}, "ref": 9})
        assert pub.receive_json() == {"type": "published", "topic": "news", "ref": 9}
        assert sub.receive_json() == {"type": "event", "topic": "news", "data": {"n": 1}}
        pub.send_json({"type": "publish", "topic": "news", "data": None})  # no ref: no answer
        assert sub.receive_json() == {"type": "event", "topic": "news", "data": None}
        sub.send_json({"type": "unsubscribe", "topic": "news"})
        assert sub.receive_json() == {"type": "unsubscribed", "topic": "news"}
        pub.send_json({"type": "publish", "topic": "news", "data": 2, "ref": 10})
        assert pub.receive_json()["ref"] == 10  # published, and went to nobody
        sub.send_json({"type": "subscribe", "topic": "other"})
        # Had the event after unsubscribe reached sub, it would come before this answer.
        assert sub.receive_json() == {"type": "subscribed", "topic": "other"}


def test_the_path_variant_subscribes_at_connect_and_app_code_publishes(client: TestClient) -> None:
    with client.websocket_connect("/topics/tasks") as ws:
        portal(client).call(hub.publish_event, "tasks", {"id": 1})
        assert ws.receive_json() == {"type": "event", "topic": "tasks", "data": {"id": 1}}


def test_a_namespace_keeps_its_topics_and_rooms_from_other_routes_on_the_hub(
    client: TestClient,
) -> None:
    with (
        client.websocket_connect("/staff/topics/news") as staff,
        client.websocket_connect("/topics/news") as open_sub,
        client.websocket_connect("/topics") as outsider,
    ):
        # A client of the open route publishes on the same topic name: only open subscribers
        # get it, never the staff route's.
        outsider.send_json({"type": "publish", "topic": "news", "data": "forged", "ref": 1})
        assert outsider.receive_json()["type"] == "published"
        assert open_sub.receive_json()["data"] == "forged"
        portal(client).call(lambda: hub.publish_event("news", "for staff", namespace="staff"))
        portal(client).call(hub.publish_event, "news", "for all")
        # Had "forged" reached staff, it would come first; "for all" must not come at all.
        assert staff.receive_json() == {"type": "event", "topic": "news", "data": "for staff"}
        assert open_sub.receive_json()["data"] == "for all"
        staff.send_json({"type": "publish", "topic": "news", "data": "staff only", "ref": 2})
        assert staff.receive_json()["data"] == "staff only"  # it is a subscriber too
        assert staff.receive_json()["type"] == "published"
        outsider.send_json({"type": "subscribe", "topic": "news"})
        assert outsider.receive_json()["type"] == "subscribed"
        portal(client).call(hub.gap, "topic#staff:news", 3)
        assert staff.receive_json() == {"type": "gap", "missed": 3, "topic": "news"}
    with (
        client.websocket_connect("/staff/chat/r?name=boss") as boss,
        client.websocket_connect("/chat/r?name=guest") as guest,
    ):
        assert boss.receive_json()["members"] == ["boss"]
        assert guest.receive_json()["members"] == ["guest"]  # not the staff room's members
        guest.send_json({"type": "say", "text": "hi", "ref": 1})
        assert guest.receive_json()["text"] == "hi"
        assert guest.receive_json()["type"] == "said"
        boss.send_json({"type": "say", "text": "only staff", "ref": 2})
        assert boss.receive_json()["text"] == "only staff"  # not guest's "hi" before it
        assert boss.receive_json()["type"] == "said"


def test_a_namespace_must_not_be_able_to_collide() -> None:
    from rtkit.errors import ConfigurationError

    for bad in ("a:b", "with space", "x" * 65):
        with pytest.raises(ConfigurationError, match="invalid namespace"):
            type("Bad", (TopicEndpoint,), {"namespace": bad})
        with pytest.raises(ConfigurationError, match="invalid namespace"):
            type("Bad", (ChatEndpoint,), {"namespace": bad})


def test_gap_notices_name_the_topic_or_room(client: TestClient) -> None:
    with (
        client.websocket_connect("/topics/t") as topic,
        client.websocket_connect("/chat/r?name=a") as chat,
    ):
        chat.receive_json()
        portal(client).call(hub.gap, "topic:t", 2)
        portal(client).call(hub.gap, "room:r", 1)
        assert topic.receive_json() == {"type": "gap", "missed": 2, "topic": "t"}
        assert chat.receive_json() == {"type": "gap", "missed": 1, "room": "r"}


def test_publish_data_is_forwarded_as_sent_on_both_wires(client: TestClient) -> None:
    with (
        client.websocket_connect("/topics/w") as plain,
        client.websocket_connect("/topics", subprotocols=["rtkit.msgpack"]) as packed,
    ):
        packed.send_bytes(msgspec.msgpack.encode({"type": "publish", "topic": "w"}))  # no data
        packed.send_bytes(msgspec.msgpack.encode({"type": "publish", "topic": "w", "data": {"x": [1.5]}}))
        plain.send_json({"type": "publish", "topic": "w", "data": "  spaced"})
        assert plain.receive_json() == {"type": "event", "topic": "w", "data": None}
        assert plain.receive_json() == {"type": "event", "topic": "w", "data": {"x": [1.5]}}
        assert plain.receive_json() == {"type": "event", "topic": "w", "data": "  spaced"}


def test_messagepack_data_without_a_json_form_gets_an_error_frame(client: TestClient) -> None:
    # An extension type is valid MessagePack, but the hub carries JSON: bad input, not a fault.
    with (
        client.websocket_connect("/topics/x") as plain,
        client.websocket_connect("/topics", subprotocols=["rtkit.msgpack"]) as packed,
    ):
        odd = msgspec.msgpack.Ext(5, b"x")
        packed.send_bytes(msgspec.msgpack.encode({"type": "publish", "topic": "x", "data": odd, "ref": 7}))
        error = msgspec.msgpack.decode(packed.receive_bytes())
        assert error["type"] == "error"
        assert error["code"] == "invalid_message"
        assert error["ref"] == 7
        assert "no JSON form" in error["detail"]
        # The socket stays open and the next publish goes through.
        packed.send_bytes(msgspec.msgpack.encode({"type": "publish", "topic": "x", "data": [1], "ref": 8}))
        assert msgspec.msgpack.decode(packed.receive_bytes()) == {"type": "published", "topic": "x", "ref": 8}
        assert plain.receive_json() == {"type": "event", "topic": "x", "data": [1]}


def test_an_on_disconnect_that_overruns_its_deadline_still_leaves_every_channel(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("rtkit.endpoint._CLEANUP_TIMEOUT", 0.2)
    topics = ["a", "b", "c"]
    released: list[str] = []
    all_released = threading.Event()

    class Recording(MemoryBackend):
        async def unsubscribe(self, channel: str) -> None:
            await super().unsubscribe(channel)
            released.append(channel)
            if len(released) == len(topics):
                all_released.set()

    class Stuck(TopicEndpoint):
        async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
            await anyio.sleep_forever()

    own_hub = Hub(Recording())
    router = RealtimeRouter(hub=own_hub)
    router.add("/topics", Stuck)
    app = Starlette(routes=router.routes, lifespan=router.lifespan)
    with TestClient(app) as own_client:
        with own_client.websocket_connect("/topics") as ws:
            for topic in topics:
                ws.send_json({"type": "subscribe", "topic": topic})
                assert ws.receive_json()["type"] == "subscribed"
            assert own_hub.channel_count == len(topics)
        assert all_released.wait(10), f"released only {released}"
        assert own_hub.channel_count == 0
    assert "Stuck: on_disconnect overran 0.2s and was cancelled" in caplog.text


@pytest.mark.parametrize("number", ["1e999", "100000000000000000000000"])
def test_json_data_without_a_messagepack_form_gets_an_error_frame(client: TestClient, number: str) -> None:
    # Valid JSON, but MessagePack subscribers could not be sent it: refused at the edge.
    with (
        client.websocket_connect("/topics/m") as plain,
        client.websocket_connect("/topics/m", subprotocols=["rtkit.msgpack"]) as packed,
    ):
        plain.send_text(f'{{"type":"publish","topic":"m","data":{{"n":{number}}},"ref":"p1"}}')
        error = plain.receive_json()
        assert (error["type"], error["code"], error["ref"]) == ("error", "invalid_message", "p1")
        assert "no MessagePack form" in error["detail"]
        plain.send_json({"type": "publish", "topic": "m", "data": 5})
        assert plain.receive_json() == {"type": "event", "topic": "m", "data": 5}  # nothing before it
        assert msgspec.msgpack.decode(packed.receive_bytes()) == {"type": "event", "topic": "m", "data": 5}


def test_a_message_a_messagepack_member_cannot_take_does_not_stop_the_fan_out(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    # App code publishes a number MessagePack cannot hold: the MessagePack member misses it
    # (counted, logged once), and the members after it still get it.
    with (
        client.websocket_connect("/topics/big") as first,
        client.websocket_connect("/topics/big", subprotocols=["rtkit.msgpack"]) as packed,
        client.websocket_connect("/topics/big") as last,
        client.websocket_connect("/topics/big", subprotocols=["rtkit.msgpack"]) as packed_too,
    ):
        dropped = hub.metrics.dropped
        portal(client).call(hub.publish_event, "big", {"n": 10**30})
        for member in (first, last):
            assert member.receive_json() == {"type": "event", "topic": "big", "data": {"n": 10**30}}
        portal(client).call(hub.publish_event, "big", 1)
        for member in (packed, packed_too):
            event = msgspec.msgpack.decode(member.receive_bytes())
            assert event == {"type": "event", "topic": "big", "data": 1}
        assert hub.metrics.dropped == dropped + 2
    warnings = [r.getMessage() for r in caplog.records if "no MessagePack form" in r.getMessage()]
    assert len(warnings) == 1
