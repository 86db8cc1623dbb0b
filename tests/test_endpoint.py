"""RealtimeEndpoint through Starlette's TestClient: typed dispatch, bad frames, faults, handshake."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any, ClassVar

import anyio
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtkit import ConfigurationError, RealtimeEndpoint, RealtimeRouter
from rtkit._types import Message
from tests.asgi import scripted_receive, websocket_scope


class Add(msgspec.Struct, tag="add", kw_only=True):
    a: int
    b: int
    ref: str | int | None = None


class Boom(msgspec.Struct, tag="boom"):
    pass


class Note(msgspec.Struct, tag="note.post"):
    text: str


events: list[tuple[str, Any]] = []


class Calculator(RealtimeEndpoint):
    """Typed handlers, an on_message fallback, and a fault on demand."""

    inbound = Add | Boom | Note

    async def on_add(self, websocket: WebSocket, message: Add) -> None:
        self.queue_message({"type": "sum", "value": message.a + message.b, "ref": message.ref})

    async def on_boom(self, websocket: WebSocket, message: Boom) -> None:
        raise RuntimeError("handler fault")

    async def on_message(self, websocket: WebSocket, message: Any) -> None:
        self.queue_message({"type": "other", "kind": type(message).__name__})

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        events.append(("disconnect", close_code))


class Params(msgspec.Struct):
    room: str
    limit: int = 10


class Handshake(RealtimeEndpoint):
    """Reports what the handshake carried."""

    params_type = Params

    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept(headers=[(b"x-served-by", b"rtkit")])
        self.queue_message(
            {
                "room": self.params.room,
                "limit": self.params.limit,
                "path": websocket.path_params,
                "query": dict(websocket.query_params),
                "header": websocket.headers.get("x-token"),
                "cookie": websocket.cookies.get("session"),
            }
        )


class Refuser(RealtimeEndpoint):
    """Never accepts: returning from on_connect without accepting refuses the socket."""

    async def on_connect(self, websocket: WebSocket) -> None:
        events.append(("refused", None))

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        events.append(("disconnect", close_code))


class BrokenConnect(RealtimeEndpoint):
    accept_first: ClassVar[bool] = False

    async def on_connect(self, websocket: WebSocket) -> None:
        if self.accept_first:
            await self.accept()
        raise ValueError("connect fault")

    async def on_disconnect(self, websocket: WebSocket, close_code: int) -> None:
        events.append(("disconnect", close_code))


class BrokenAfterAccept(BrokenConnect):
    accept_first = True


class Closer(RealtimeEndpoint):
    """Queues two frames then asks to close: the frames arrive first."""

    inbound = Add

    async def on_add(self, websocket: WebSocket, message: Add) -> None:
        self.queue_message({"n": 1})
        self.queue_message({"n": 2})
        await self.close(4001, "done")


class RawReceiver(RealtimeEndpoint):
    """Overrides on_receive: handlers are not required and raw decoded values arrive."""

    inbound = dict[str, int]

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        self.queue_message({"total": sum(data.values())})


class NeedsHub(RealtimeEndpoint):
    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept()
        await self.subscribe("x")


def build_app() -> Starlette:
    router = RealtimeRouter()
    router.add("/calc", Calculator)
    router.add("/hs/{room}", Handshake)
    router.add("/refuse", Refuser)
    router.add("/broken", BrokenConnect)
    router.add("/broken-after", BrokenAfterAccept)
    router.add("/closer", Closer)
    router.add("/raw", RawReceiver)
    router.add("/needs-hub", NeedsHub)
    return Starlette(
        routes=[*router.routes, WebSocketRoute("/no-hub", NeedsHub)],
        lifespan=router.lifespan,
    )


@pytest.fixture(params=["asyncio", "trio"])
def client(request: pytest.FixtureRequest) -> Iterator[TestClient]:
    events.clear()
    with TestClient(build_app(), backend=request.param) as test_client:
        yield test_client


def test_messages_reach_the_handler_of_their_type(client: TestClient) -> None:
    with client.websocket_connect("/calc") as ws:
        ws.send_json({"type": "add", "a": 2, "b": 3, "ref": "q1"})
        assert ws.receive_json() == {"type": "sum", "value": 5, "ref": "q1"}
        ws.send_json({"type": "note.post", "text": "hi"})  # no on_note_post: on_message takes it
        assert ws.receive_json() == {"type": "other", "kind": "Note"}


@pytest.mark.parametrize(
    ("frame", "detail"),
    [
        ("not json", "JSON is malformed"),
        ('{"type": "add", "a": "x", "b": 1}', "Expected `int`, got `str` - at `$.a`"),
        ('{"type": "add", "a": 1}', "Object missing required field `b`"),
        ('{"type": "nope"}', "Invalid value 'nope' - at `$.type`"),
        ('{"a": 1}', "Object missing required field `type`"),
        ("[1, 2]", "Expected `object`, got `array`"),
    ],
)
def test_a_bad_frame_gets_an_error_frame_and_the_socket_stays(
    client: TestClient, frame: str, detail: str
) -> None:
    with client.websocket_connect("/calc") as ws:
        ws.send_text(frame)
        reply = ws.receive_json()
        assert reply["type"] == "error"
        assert reply["code"] == "invalid_message"
        assert detail in reply["detail"]
        ws.send_json({"type": "add", "a": 1, "b": 1})
        assert ws.receive_json()["value"] == 2


def test_an_error_frame_carries_the_ref_of_the_bad_request(client: TestClient) -> None:
    with client.websocket_connect("/calc") as ws:
        ws.send_json({"type": "add", "a": "x", "b": 1, "ref": 7})
        assert ws.receive_json()["ref"] == 7


def test_binary_on_a_json_connection_is_a_peer_error(client: TestClient) -> None:
    with client.websocket_connect("/calc") as ws:
        ws.send_bytes(b'{"type": "add", "a": 1, "b": 1, "ref": "r1"}')
        reply = ws.receive_json()
        assert reply["code"] == "invalid_message"
        assert "expected text (JSON) frames" in reply["detail"]
        assert reply["ref"] == "r1"  # read by a best-effort probe, as for undecodable frames


def test_msgpack_subprotocol_uses_binary_frames_both_ways(client: TestClient) -> None:
    with client.websocket_connect("/calc", subprotocols=["rtkit.msgpack"]) as ws:
        assert ws.accepted_subprotocol == "rtkit.msgpack"
        ws.send_bytes(msgspec.msgpack.encode({"type": "add", "a": 4, "b": 5, "ref": 1}))
        assert msgspec.msgpack.decode(ws.receive_bytes()) == {"type": "sum", "value": 9, "ref": 1}
        ws.send_text('{"type": "add", "a": 1, "b": 1}')
        error = msgspec.msgpack.decode(ws.receive_bytes())
        assert error["code"] == "invalid_message"
        assert "binary (MessagePack)" in error["detail"]
        ws.send_bytes(msgspec.msgpack.encode({"type": "add", "a": "x", "b": 1, "ref": "r"}))
        error = msgspec.msgpack.decode(ws.receive_bytes())
        assert (error["code"], error["ref"]) == ("invalid_message", "r")
        # A JSON text frame may carry a ref MessagePack cannot hold: answered without it.
        ws.send_text('{"type": "add", "a": 1, "b": 1, "ref": 100000000000000000000000}')
        error = msgspec.msgpack.decode(ws.receive_bytes())
        assert error["code"] == "invalid_message"
        assert "ref" not in error
        ws.send_bytes(msgspec.msgpack.encode({"type": "add", "a": 2, "b": 2, "ref": 2}))
        assert msgspec.msgpack.decode(ws.receive_bytes())["value"] == 4  # still open


def test_json_is_kept_when_msgpack_is_not_offered(client: TestClient) -> None:
    with client.websocket_connect("/calc", subprotocols=["something-else"]) as ws:
        assert ws.accepted_subprotocol is None
        ws.send_json({"type": "add", "a": 1, "b": 2})
        assert ws.receive_json()["value"] == 3


def test_a_fault_in_a_handler_closes_1011_logs_and_spares_the_others(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with client.websocket_connect("/calc") as healthy, client.websocket_connect("/calc") as doomed:
        with caplog.at_level(logging.ERROR, logger="rtkit"):
            doomed.send_json({"type": "boom"})
            with pytest.raises(WebSocketDisconnect) as closed:
                doomed.receive_json()
        assert closed.value.code == 1011
        record = next(r for r in caplog.records if r.name == "rtkit")
        assert "Calculator" in record.getMessage()
        assert record.exc_info is not None
        assert "handler fault" in str(record.exc_info[1])
        healthy.send_json({"type": "add", "a": 1, "b": 1})
        assert healthy.receive_json()["value"] == 2
    assert ("disconnect", 1011) in events


def test_on_disconnect_gets_the_clients_close_code(client: TestClient) -> None:
    with client.websocket_connect("/calc") as ws:
        ws.close(4321)
    assert events == [("disconnect", 4321)]


def test_handshake_values_reach_the_hooks_typed(client: TestClient) -> None:
    client.cookies.set("session", "s3")
    with client.websocket_connect("/hs/lobby?limit=5&x=y", headers={"x-token": "t0k"}) as ws:
        assert ws.extra_headers is not None
        assert (b"x-served-by", b"rtkit") in ws.extra_headers
        assert ws.receive_json() == {
            "room": "lobby",
            "limit": 5,
            "path": {"room": "lobby"},
            "query": {"limit": "5", "x": "y"},
            "header": "t0k",
            "cookie": "s3",
        }


def test_parameters_of_the_wrong_type_refuse_the_socket(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/hs/lobby?limit=many"):
        pass
    assert refused.value.status_code == 403
    assert "limit" in refused.value.text


def test_on_connect_without_accept_refuses_and_on_disconnect_still_runs(client: TestClient) -> None:
    # The server supports denial responses: the refusal is an HTTP 403 that says so.
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/refuse"):
        pass
    assert (refused.value.status_code, refused.value.text) == (403, "refused by the server")
    assert events == [("refused", None), ("disconnect", 1008)]


@pytest.mark.parametrize("path", ["/broken", "/broken-after"])
def test_a_fault_in_on_connect_closes_1011(
    client: TestClient, caplog: pytest.LogCaptureFixture, path: str
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="rtkit"),
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect(path) as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1011
    assert any("on_connect" in r.getMessage() for r in caplog.records)
    assert events == [("disconnect", 1011)]


def test_close_sends_what_was_queued_first(client: TestClient) -> None:
    with client.websocket_connect("/closer") as ws:
        ws.send_json({"type": "add", "a": 0, "b": 0})
        assert ws.receive_json() == {"n": 1}
        assert ws.receive_json() == {"n": 2}
        with pytest.raises(WebSocketDisconnect) as closed:
            ws.receive_json()
        assert (closed.value.code, closed.value.reason) == (4001, "done")


def test_overriding_on_receive_takes_every_decoded_message(client: TestClient) -> None:
    with client.websocket_connect("/raw") as ws:
        ws.send_json({"a": 1, "b": 2})
        assert ws.receive_json() == {"total": 3}


def test_an_endpoint_routed_without_a_hub_explains_itself(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="rtkit"),
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/no-hub") as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1011
    assert any(
        r.exc_info and "functools.partial(Endpoint, hub=hub)" in str(r.exc_info[1]) for r in caplog.records
    )


def test_a_mounted_router_without_lifespan_says_how_to_start_the_hub(
    caplog: pytest.LogCaptureFixture,
) -> None:
    router = RealtimeRouter()
    router.add("/x", NeedsHub)
    app = Starlette(routes=[Mount("/ws", app=router)])  # forgot lifespan=router.lifespan
    with (
        TestClient(app) as client,
        caplog.at_level(logging.ERROR, logger="rtkit"),
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/ws/x") as ws,
    ):
        ws.receive_json()
    assert closed.value.code == 1011
    assert any(r.exc_info and "lifespan=router.lifespan" in str(r.exc_info[1]) for r in caplog.records)


def test_a_handler_missing_for_an_inbound_type_fails_at_class_creation() -> None:
    with pytest.raises(ConfigurationError, match=r"no on_add\(self, websocket, message\)"):

        class Incomplete(RealtimeEndpoint):
            inbound = Add | Boom

            async def on_boom(self, websocket: WebSocket, message: Boom) -> None: ...

    with pytest.raises(ConfigurationError, match="no on_message"):

        class Untagged(RealtimeEndpoint):
            inbound = dict[str, int]


@pytest.mark.anyio
async def test_a_server_that_refuses_frames_ends_the_connection_quietly(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """wsproto answers a send after its own close with RuntimeError: the socket just ends."""
    events.clear()

    async def send(message: Message) -> None:
        if message["type"] == "websocket.send":
            raise RuntimeError("Unexpected ASGI message 'websocket.send', after sending 'websocket.close'.")

    receive = scripted_receive('{"type": "add", "a": 1, "b": 2}')
    with caplog.at_level(logging.ERROR), anyio.fail_after(5):
        await Calculator(websocket_scope("/calc"), receive, send)
    assert events == [("disconnect", 1006)]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


@pytest.mark.anyio
async def test_a_peer_that_leaves_during_the_handshake_is_a_disconnect_not_a_fault(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """uvicorn answers the accept of a peer that already left with ClientDisconnected."""
    from uvicorn.protocols.utils import ClientDisconnected

    assert issubclass(ClientDisconnected, OSError)
    events.clear()

    async def send(message: Message) -> None:
        if message["type"] == "websocket.accept":
            raise ClientDisconnected

    endpoint = Calculator(websocket_scope("/calc"), scripted_receive(), send)
    closes_before = endpoint.metrics.closes[1006]
    with caplog.at_level(logging.WARNING), anyio.fail_after(5):
        await endpoint
    assert events == [("disconnect", 1006)]
    assert endpoint.metrics.closes[1006] == closes_before + 1
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
