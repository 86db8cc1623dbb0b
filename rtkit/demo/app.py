"""Builds the demo application: the page, the WebSocket endpoints, tasks and health."""

from __future__ import annotations

from importlib import resources

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response
from starlette.routing import Mount, Route

from rtkit.demo.tasks import TaskStore, TaskViews
from rtkit.handlers import ChatEndpoint, EchoEndpoint, TopicEndpoint
from rtkit.hub import Hub
from rtkit.routing import RealtimeRouter

__all__ = ["create_app"]


def _page() -> str:
    return resources.files("rtkit.demo").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(*, hub: Hub | None = None, task_limit: int = 1000) -> Starlette:
    """The demo app (``rtkit serve`` runs it).

    Routes: ``GET /`` (the page), ``GET /health``, ``GET``/``POST /tasks``, and the WebSockets
    ``/ws/echo``, ``/ws/chat/{room}``, ``/ws/topics`` and ``/ws/topics/{topic}``.

    Args:
        hub: the hub to use; a new in-memory one by default.
        task_limit: how many tasks the store keeps.
    """
    router = RealtimeRouter(hub=hub)
    router.add("/echo", EchoEndpoint, name="echo")
    router.add("/chat/{room}", ChatEndpoint, name="chat")
    router.add("/topics", TopicEndpoint, name="topics")
    router.add("/topics/{topic}", TopicEndpoint, name="topic")
    tasks = TaskViews(TaskStore(limit=task_limit), router.hub)
    page = _page()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        status = {"status": "ok", "backend": router.hub.health(), "hub": router.hub.stats.as_dict()}
        return Response(msgspec.json.encode(status), media_type="application/json")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/tasks", tasks.list, methods=["GET"]),
            Route("/tasks", tasks.create, methods=["POST"]),
            Mount("/ws", app=router),
        ],
        lifespan=router.lifespan,
    )
    app.state.hub = router.hub
    return app
