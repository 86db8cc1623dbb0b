"""RealtimeRouter in Starlette and FastAPI: routes, mounting, and the hub's lifespan."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.testclient import TestClient
from starlette.websockets import WebSocket, WebSocketDisconnect

from rtkit import ChatEndpoint, ConfigurationError, EchoEndpoint, Hub, RealtimeRouter, TopicEndpoint


def make_router(hub: Hub | None = None) -> RealtimeRouter:
    router = RealtimeRouter(hub=hub)
    router.add("/echo", EchoEndpoint)
    router.add("/topics/{topic}", TopicEndpoint)
    return router


def check_topic_round_trip(client: TestClient, prefix: str) -> None:
    """A publish through one socket reaches another: the endpoints and a started hub work."""
    with (
        client.websocket_connect(f"{prefix}/topics/t") as first,
        client.websocket_connect(f"{prefix}/topics/t") as second,
    ):
        first.send_json({"type": "publish", "topic": "t", "data": 1})
        assert second.receive_json() == {"type": "event", "topic": "t", "data": 1}
        assert first.receive_json() == {"type": "event", "topic": "t", "data": 1}


def test_routes_in_a_starlette_app() -> None:
    router = make_router()
    with TestClient(Starlette(routes=router.routes, lifespan=router.lifespan)) as client:
        check_topic_round_trip(client, "")
    assert not router.hub.started


def test_mounted_in_starlette_with_the_routers_lifespan() -> None:
    router = make_router()
    app = Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan)
    with TestClient(app) as client:
        assert router.hub.started
        check_topic_round_trip(client, "/ws")
        with client.websocket_connect("/ws/echo") as ws:
            ws.send_text("x")
            assert ws.receive_text() == "x"
    assert not router.hub.started


def test_the_router_as_the_whole_app_runs_its_own_lifespan() -> None:
    router = make_router()
    with TestClient(router) as client:
        assert router.hub.started
        check_topic_round_trip(client, "")
    assert not router.hub.started


def test_combined_with_a_lifespan_of_the_apps_own() -> None:
    router = make_router()
    seen: list[bool] = []

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with router:
            seen.append(router.hub.started)
            yield

    with TestClient(Starlette(routes=[Mount("/rt", app=router)], lifespan=lifespan)) as client:
        check_topic_round_trip(client, "/rt")
    assert seen == [True]
    assert not router.hub.started


def test_fastapi_include_router_starts_the_hub_with_the_app() -> None:
    router = make_router()
    app = FastAPI()
    app.include_router(router.api_router(), prefix="/live")
    with TestClient(app) as client:
        assert router.hub.started
        check_topic_round_trip(client, "/live")
    assert not router.hub.started


def test_an_api_routers_own_prefix_applies_to_the_endpoints() -> None:
    router = make_router()
    app = FastAPI()
    app.include_router(router.api_router(prefix="/ws"), prefix="/live")
    with TestClient(app) as client:
        check_topic_round_trip(client, "/live/ws")
        with pytest.raises(WebSocketDisconnect), client.websocket_connect("/live/topics/t") as ws:
            ws.receive_json()  # no route there: refused


class WhereAmI(EchoEndpoint):
    """Answers a text frame with the URL of the named route for that topic."""

    async def on_receive(self, websocket: WebSocket, data: Any) -> None:
        await websocket.send_text(str(websocket.url_for("where", topic=data)))


def test_url_for_works_with_the_router_as_the_whole_app() -> None:
    router = RealtimeRouter()
    router.add("/where/{topic}", WhereAmI, name="where")
    with TestClient(router) as client, client.websocket_connect("/where/a") as ws:
        ws.send_text("b")
        assert ws.receive_text() == "ws://testserver/where/b"


def test_fastapi_mount_with_the_routers_lifespan() -> None:
    router = make_router()
    app = FastAPI(lifespan=router.lifespan)
    app.mount("/ws", router)
    with TestClient(app) as client:
        check_topic_round_trip(client, "/ws")


def test_fastapi_app_code_publishes_through_the_hub() -> None:
    router = make_router()
    app = FastAPI(lifespan=router.lifespan)
    app.mount("/ws", router)

    @app.post("/announce/{topic}")
    async def announce(topic: str, text: str) -> dict[str, str]:
        await router.hub.publish_event(topic, {"text": text})
        return {"status": "sent"}

    with TestClient(app) as client, client.websocket_connect("/ws/topics/news") as ws:
        assert client.post("/announce/news", params={"text": "hello"}).json() == {"status": "sent"}
        assert ws.receive_json() == {"type": "event", "topic": "news", "data": {"text": "hello"}}


def test_two_routers_share_one_hub() -> None:
    hub = Hub()
    chat, topics = RealtimeRouter(hub=hub), make_router(hub)
    chat.add("/chat/{room}", ChatEndpoint)
    app = Starlette(routes=[*chat.routes, *topics.routes], lifespan=chat.lifespan)
    with TestClient(app) as client, client.websocket_connect("/chat/r?name=a") as ws:
        assert ws.receive_json()["type"] == "welcome"


def test_the_decorator_form_names_the_route() -> None:
    router = RealtimeRouter()

    @router.websocket("/e", name="echo")
    class MyEcho(EchoEndpoint):
        pass

    # The WebSocket route, and its plain HTTP GET that says what a handshake would get.
    assert [getattr(route, "name", None) for route in router.routes] == ["echo", "echo:probe"]
    with TestClient(router) as client, client.websocket_connect("/e") as ws:
        ws.send_text("d")
        assert ws.receive_text() == "d"


def test_add_takes_only_realtime_endpoints() -> None:
    router = RealtimeRouter()
    with pytest.raises(ConfigurationError, match="RealtimeEndpoint subclass"):
        router.add("/x", object)  # type: ignore[arg-type]
