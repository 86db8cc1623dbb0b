"""Builds the demo application: the page, the WebSocket endpoints, tasks, health and metrics."""

from __future__ import annotations

import logging
from importlib import resources

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from rtkit.auth import JWTAuthenticator
from rtkit.demo.secure import SecureTopicEndpoint
from rtkit.demo.tasks import TaskStore, TaskViews
from rtkit.handlers import ChatEndpoint, EchoEndpoint, TopicEndpoint
from rtkit.hub import Hub
from rtkit.limits import Limits
from rtkit.routing import RealtimeRouter

__all__ = ["DEMO_SECRET", "create_app"]

logger = logging.getLogger("rtkit.demo")

DEMO_SECRET = "rtkit-demo-secret-for-trying-it-out-only"
"""The JWT secret of the demo's secured route when none is given: for trying it out only."""


def _page() -> str:
    return resources.files("rtkit.demo").joinpath("static/index.html").read_text(encoding="utf-8")


def create_app(
    *,
    hub: Hub | None = None,
    limits: Limits | None = None,
    jwt_secret: str | None = None,
    task_limit: int = 1000,
) -> Starlette:
    """The demo app (``rtkit serve`` runs it).

    Routes: ``GET /`` (the page), ``GET /health``, ``GET /metrics`` (Prometheus text),
    ``GET``/``POST /tasks``, and the WebSockets ``/ws/echo``, ``/ws/chat/{room}``,
    ``/ws/topics``, ``/ws/topics/{topic}`` and ``/ws/secure/topics/{topic}`` (HS256 JWT).

    Args:
        hub: the hub to use; a new in-memory one by default.
        limits: the limits of every WebSocket route; ``Limits()`` by default.
        jwt_secret: the secret of the secured route; ``DEMO_SECRET`` by default.
        task_limit: how many tasks the store keeps.
    """
    limits = limits if limits is not None else Limits()
    if jwt_secret is None:
        logger.warning("the secured route uses the demo's public JWT secret: pass --jwt-secret")
    authenticator = JWTAuthenticator(jwt_secret or DEMO_SECRET)
    router = RealtimeRouter(hub=hub)
    router.add("/echo", EchoEndpoint, name="echo", limits=limits)
    router.add("/chat/{room}", ChatEndpoint, name="chat", limits=limits)
    router.add("/topics", TopicEndpoint, name="topics", limits=limits)
    router.add("/topics/{topic}", TopicEndpoint, name="topic", limits=limits)
    router.add(
        "/secure/topics/{topic}",
        SecureTopicEndpoint,
        name="secure-topic",
        limits=limits,
        authenticator=authenticator,
    )
    tasks = TaskViews(TaskStore(limit=task_limit), router.hub)
    page = _page()

    async def index(request: Request) -> Response:
        return HTMLResponse(page)

    async def health(request: Request) -> Response:
        backend = router.hub.health()
        status = {
            "status": "ok" if backend.state == "up" else backend.state,
            "backend": backend,
            "connections": router.hub.metrics.connections_open,
        }
        code = 503 if backend.state == "down" else 200
        return Response(msgspec.json.encode(status), status_code=code, media_type="application/json")

    async def metrics(request: Request) -> Response:
        text = router.hub.metrics.render_prometheus()
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/tasks", tasks.list, methods=["GET"]),
            Route("/tasks", tasks.create, methods=["POST"]),
            Mount("/ws", app=router),
        ],
        lifespan=router.lifespan,
    )
    app.state.hub = router.hub
    return app
