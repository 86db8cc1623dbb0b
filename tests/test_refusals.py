"""A refused handshake says why: to the client (the HTTP denial's body), to the log (one WARNING
line, never the credential) and to a plain HTTP GET of the route (what a handshake would get)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from rtkit import (
    ChatEndpoint,
    EchoEndpoint,
    HandshakeRefusedError,
    JWTAuthenticator,
    Limits,
    RealtimeRouter,
)
from rtkit._line_budget import LineBudget
from rtkit.auth import create_token
from rtkit.testing import LiveServer
from tests.live import FAST_PROTOCOL, TIMEOUT

SECRET = "a-secret-of-at-least-thirty-two-bytes!"


class Count(msgspec.Struct):
    n: int


class Counted(EchoEndpoint):
    params_type = Count


class Busy(EchoEndpoint):
    async def on_handshake(self, websocket: WebSocket) -> None:
        raise HandshakeRefusedError("busy, come back later", status=503)


class ClosesBusy(EchoEndpoint):
    async def on_connect(self, websocket: WebSocket) -> None:
        await self.close(1013, "full tonight")


class RefusesInConnect(EchoEndpoint):
    async def on_connect(self, websocket: WebSocket) -> None:
        raise HandshakeRefusedError("not today")


class RefusesTooLate(EchoEndpoint):
    async def on_connect(self, websocket: WebSocket) -> None:
        await self.accept()
        raise HandshakeRefusedError("too late to refuse")


class BrokenHandshake(EchoEndpoint):
    async def on_handshake(self, websocket: WebSocket) -> None:
        raise LookupError("a bug in the check")


def build_router() -> RealtimeRouter:
    router = RealtimeRouter()
    router.add("/chat/{room}", ChatEndpoint)
    router.add("/secure", EchoEndpoint, authenticator=JWTAuthenticator(SECRET))
    router.add("/counted", Counted)
    router.add("/busy", Busy)
    router.add("/closes-busy", ClosesBusy)
    router.add("/in-connect", RefusesInConnect)
    router.add("/too-late", RefusesTooLate)
    router.add("/broken", BrokenHandshake)
    router.add("/one", EchoEndpoint, name="one", limits=Limits(max_connections=1))
    return router


@pytest.fixture
def router() -> RealtimeRouter:
    return build_router()


@pytest.fixture
def client(router: RealtimeRouter) -> Iterator[TestClient]:
    app = Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan)
    with TestClient(app) as client:
        yield client


def refusal(client: TestClient, path: str, headers: dict[str, str] | None = None) -> tuple[int, str]:
    with (
        pytest.raises(WebSocketDenialResponse) as refused,
        client.websocket_connect(path, headers=dict(headers or {})),
    ):
        pass
    return refused.value.status_code, refused.value.text


@pytest.mark.parametrize(
    ("path", "headers", "expected"),
    [
        ("/ws/secure", {}, (403, "missing token")),
        ("/ws/secure", {"authorization": "Bearer not-a-jwt"}, (403, "invalid token")),
        ("/ws/counted?n=many", {}, (403, "invalid parameters: Expected `int`, got `str` - at `$.n`")),
        ("/ws/chat/lobby?name=" + "x" * 65, {}, (403, "name too long: at most 64 characters")),
        ("/ws/busy", {}, (503, "busy, come back later")),
        ("/ws/closes-busy", {}, (503, "full tonight")),
        ("/ws/in-connect", {}, (403, "not today")),
        ("/ws/broken", {}, (500, "server error")),
    ],
)
def test_every_refusal_says_why_in_the_denial_body(
    client: TestClient, path: str, headers: dict[str, str], expected: tuple[int, str]
) -> None:
    assert refusal(client, path, headers=headers) == expected


def test_an_expired_token_is_told_apart(client: TestClient) -> None:
    expired = create_token(SECRET, "ann", ttl=-10)
    assert refusal(client, "/ws/secure", headers={"authorization": f"Bearer {expired}"}) == (
        403,
        "token expired",
    )


def test_a_bad_room_name_is_named_in_the_reason(client: TestClient) -> None:
    status, text = refusal(client, "/ws/chat/a%20b")
    assert status == 403
    assert text.startswith("room invalid name 'a b': use 1 to 255 characters")


def test_a_503_refusal_says_when_to_retry(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/ws/busy"):
        pass
    assert refused.value.headers["retry-after"] == "5"


def test_a_refusal_after_accept_is_a_fault_closed_1011(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with (
        caplog.at_level(logging.ERROR, logger="rtkit"),
        pytest.raises(WebSocketDisconnect) as closed,
        client.websocket_connect("/ws/too-late") as ws,
    ):
        ws.receive_text()
    assert closed.value.code == 1011
    assert "too late to refuse" in caplog.text


def test_each_refusal_logs_one_warning_without_the_credential(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    token = "eyJ.secret-looking.token"
    with caplog.at_level(logging.INFO, logger="rtkit"):
        refusal(client, f"/ws/secure?token={token}")
    lines = [record for record in caplog.records if record.name == "rtkit"]
    assert [record.levelno for record in lines] == [logging.WARNING]
    message = lines[0].getMessage()
    assert message == "EchoEndpoint refused testclient:50000 on /ws/secure: HTTP 403, invalid token"
    assert token not in caplog.text


def test_a_flood_of_refusals_is_summed_up_not_logged_line_by_line(
    client: TestClient, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("rtkit.endpoint._REFUSAL_LINES", LineBudget(per_second=3))
    with caplog.at_level(logging.WARNING, logger="rtkit"):
        for _ in range(10):
            refusal(client, "/ws/secure")
    # The test may straddle a second's edge: at most two windows' worth of lines.
    assert 3 <= len(caplog.records) <= 6


def test_a_plain_get_of_a_route_says_what_a_handshake_would_get(
    client: TestClient, router: RealtimeRouter
) -> None:
    token = create_token(SECRET, "ann")
    accepted = client.get("/ws/secure", headers={"authorization": f"Bearer {token}"})
    assert accepted.status_code == 426
    assert accepted.headers["upgrade"] == "websocket"
    assert client.get("/ws/secure").text == "missing token"
    assert (
        client.get("/ws/secure", headers={"sec-websocket-protocol": f"rtkit.bearer, {token}"}).status_code
        == 426
    )
    long_name = client.get("/ws/chat/lobby", params={"name": "x" * 65})
    assert (long_name.status_code, long_name.text) == (403, "name too long: at most 64 characters")
    assert client.get("/ws/chat/lobby", params={"name": "ann"}).status_code == 426
    busy = client.get("/ws/busy")
    assert (busy.status_code, busy.text, busy.headers["retry-after"]) == (503, "busy, come back later", "5")
    # A probe is not a connection: nothing is counted or held.
    assert sum(router.hub.metrics.refused.values()) == 0
    assert router.hub.metrics.connections_open == 0


def test_the_probe_sees_the_connection_cap(client: TestClient) -> None:
    assert client.get("/ws/one").status_code == 426
    with client.websocket_connect("/ws/one") as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
        full = client.get("/ws/one")
        assert (full.status_code, full.text) == (503, "server at capacity")
    assert client.get("/ws/one").status_code == 426


def test_the_probe_works_through_fastapi_include_router() -> None:
    from fastapi import FastAPI

    router = build_router()
    api = FastAPI()
    api.include_router(router.api_router(prefix="/ws"))
    with TestClient(api) as client:
        assert client.get("/ws/secure").text == "missing token"
        assert client.get("/ws/chat/lobby").status_code == 426


def test_line_budget_allows_a_number_a_second_and_counts_the_rest() -> None:
    budget = LineBudget(per_second=2)
    assert [budget.take(10.0), budget.take(10.1), budget.take(10.2), budget.take(10.9)] == [0, 0, None, None]
    assert budget.take(11.0) == 2  # the next second's first line mentions the two held back
    assert budget.take(11.5) == 0
    assert budget.take(11.6) is None
    assert budget.take(20.0) == 1


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.mark.anyio
@pytest.mark.parametrize("ws", ["websockets-sansio", FAST_PROTOCOL])
async def test_a_real_client_reads_the_reason_of_a_refusal(ws: str) -> None:
    router = build_router()
    app = Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan)
    with LiveServer(app, ws=ws) as server:
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url("/ws/secure"), open_timeout=TIMEOUT):
                pass
        response = refused.value.response
        assert (response.status_code, bytes(response.body or b"")) == (403, b"missing token")
