"""Builds the demo application: the page, the WebSocket endpoints, tasks, health and metrics."""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import AsyncIterator
from importlib import resources
from typing import Annotated

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, PlainTextResponse, Response
from starlette.routing import Mount, Route

from rtkit._types import ASGIApp, Message, Receive, Scope, Send
from rtkit.auth import JWTAuthenticator
from rtkit.channels import topic_channel
from rtkit.demo.secure import DemoTopicEndpoint, SecureTopicEndpoint
from rtkit.demo.tasks import TASKS_TOPIC, TaskStore, TaskViews
from rtkit.errors import BackendError, ConfigurationError
from rtkit.handlers import ChatEndpoint, EchoEndpoint
from rtkit.hub import Hub
from rtkit.limits import Limits
from rtkit.routing import RealtimeRouter

__all__ = ["DEMO_SECRET", "SETTINGS_ENV", "DemoSettings", "app_from_environment", "create_app"]

logger = logging.getLogger("rtkit.demo")

DEMO_SECRET = "rtkit-demo-secret-for-trying-it-out-only"
"""The JWT secret of the demo's secured route when none is given: for trying it out only."""

SETTINGS_ENV = "RTKIT_DEMO_SETTINGS"
"""The environment variable through which ``rtkit serve`` hands settings to its workers."""


class DemoSettings(msgspec.Struct, frozen=True, kw_only=True):
    """Everything ``rtkit serve`` configures in the demo app."""

    limits: Limits = Limits()
    jwt_secret: str | None = None
    redis_url: str | None = None
    redis_prefix: str = "rtkit-demo"
    task_limit: Annotated[int, msgspec.Meta(ge=1)] = 1000


def _page() -> str:
    return resources.files("rtkit.demo").joinpath("static/index.html").read_text(encoding="utf-8")


def _hub_for(settings: DemoSettings) -> Hub:
    if settings.redis_url is None:
        return Hub()
    from rtkit.backends.redis import RedisBackend

    return Hub(RedisBackend(settings.redis_url, prefix=settings.redis_prefix))


def create_app(*, hub: Hub | None = None, settings: DemoSettings | None = None) -> Starlette:
    """The demo app (``rtkit serve`` runs it).

    Routes: ``GET /`` (the page), ``GET /health``, ``GET /metrics`` (Prometheus text),
    ``GET``/``POST /tasks``, and the WebSockets ``/ws/echo``, ``/ws/chat/{room}``,
    ``/ws/topics``, ``/ws/topics/{topic}`` and ``/ws/secure/topics/{topic}`` (HS256 JWT).

    Args:
        hub: the hub to use; by default one on Redis if ``settings.redis_url`` is set, else
            in memory.
        settings: limits, secrets and backend; ``DemoSettings()`` by default.
    """
    settings = settings if settings is not None else DemoSettings()
    if hub is not None and settings.redis_url is not None:
        raise ConfigurationError("create_app: pass a hub or settings.redis_url, not both")
    secret = settings.jwt_secret
    if secret is None:
        logger.info("the secured route uses the demo's public JWT secret: pass --jwt-secret")
    limits = settings.limits
    router = RealtimeRouter(hub=hub if hub is not None else _hub_for(settings))
    router.add("/echo", EchoEndpoint, name="echo", limits=limits)
    router.add("/chat/{room}", ChatEndpoint, name="chat", limits=limits)
    router.add("/topics", DemoTopicEndpoint, name="topics", limits=limits)
    router.add("/topics/{topic}", DemoTopicEndpoint, name="topic", limits=limits)
    router.add(
        "/secure/topics/{topic}",
        SecureTopicEndpoint,
        name="secure-topic",
        limits=limits,
        # Only an absent secret means the demo's public one: an empty or short secret is
        # refused (ConfigurationError), never quietly replaced by a public one.
        authenticator=JWTAuthenticator(DEMO_SECRET if secret is None else secret),
    )
    store = TaskStore(limit=settings.task_limit)
    tasks = TaskViews(store, router.hub)
    # The page keeps its sockets open through the idle timeout and its list as short as the
    # server's: it reads both from these tags.
    page = (
        _page()
        .replace(
            '<meta name="rtkit-idle-timeout" content="">',
            f'<meta name="rtkit-idle-timeout" content="{limits.idle_timeout or ""}">',
        )
        .replace(
            '<meta name="rtkit-task-limit" content="1000">',
            f'<meta name="rtkit-task-limit" content="{settings.task_limit}">',
        )
    )

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
        text = router.hub.metrics.render_prometheus(health=router.hub.health())
        return PlainTextResponse(text, media_type="text/plain; version=0.0.4")

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        async with contextlib.AsyncExitStack() as stack:
            try:
                await stack.enter_async_context(router)
            except BackendError as exc:
                # Said in one line by _StartupFailureInOneLine, rather than as a traceback.
                app.state.startup_error = f"cannot start the demo: {exc}"
                raise
            await router.hub.subscribe(topic_channel(TASKS_TOPIC), store)
            yield

    app = Starlette(
        routes=[
            Route("/", index),
            Route("/health", health),
            Route("/metrics", metrics),
            Route("/tasks", tasks.list, methods=["GET"]),
            Route("/tasks", tasks.create, methods=["POST"]),
            Mount("/ws", app=router),
        ],
        lifespan=lifespan,
    )
    app.state.hub = router.hub
    return app


class _StartupFailureInOneLine:
    """Reports a backend out of reach at startup as one line, not as a traceback.

    Starlette reports a failed lifespan with the whole traceback as its message, which uvicorn
    logs; a server that cannot reach Redis deserves one line saying so, then its exit.
    """

    def __init__(self, app: Starlette) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "lifespan":
            await self.app(scope, receive, send)
            return

        async def send_short(message: Message) -> None:
            reason = getattr(self.app.state, "startup_error", None)
            if message["type"] == "lifespan.startup.failed" and reason:
                message = {**message, "message": reason}
            await send(message)

        await self.app(scope, receive, send_short)


def app_from_environment() -> ASGIApp:
    """The demo app configured by ``RTKIT_DEMO_SETTINGS`` (JSON ``DemoSettings``).

    ``rtkit serve`` runs every worker process through this factory.
    """
    raw = os.environ.get(SETTINGS_ENV)
    settings = msgspec.json.decode(raw, type=DemoSettings) if raw else DemoSettings()
    return _StartupFailureInOneLine(create_app(settings=settings))
