"""``RealtimeRouter``: the routes of rtkit endpoints, with the hub they share and its lifespan.

A mounted Starlette or FastAPI sub-application never receives lifespan events, so the router
cannot start its hub by itself when it is mounted: hand its lifespan to the host application
(``lifespan=router.lifespan``), include it in FastAPI with ``include_router`` (FastAPI merges
the lifespan of included routers), or enter ``async with router:`` in a lifespan of your own.

Each WebSocket route also answers a plain HTTP ``GET`` with what a handshake would get: 426
Upgrade Required when it would be admitted, else the refusal's status and reason. A browser
hides a refused handshake's response from scripts; a page (the demo's does) or ``curl`` can
learn the reason this way.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import TYPE_CHECKING, Any, TypeVar

from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import BaseRoute, Match, Route, Router, WebSocketRoute

from rtkit._types import Message, Receive, Scope, Send
from rtkit.auth import Authenticator
from rtkit.endpoint import RealtimeEndpoint
from rtkit.errors import ConfigurationError
from rtkit.hub import Hub
from rtkit.limits import Limits

if TYPE_CHECKING:
    from fastapi import APIRouter

__all__ = ["RealtimeRouter"]

E = TypeVar("E", bound=type[RealtimeEndpoint])


class RealtimeRouter:
    """Routes for rtkit endpoints that share one hub; an ASGI app in its own right.

    Args:
        hub: the hub the endpoints share; a new in-memory ``Hub()`` by default.

    Use it as the ``routes`` of an app, mount it, or include it in FastAPI::

        router = RealtimeRouter()
        router.add("/chat/{room}", ChatEndpoint)
        app = Starlette(routes=[Mount("/ws", app=router)], lifespan=router.lifespan)
    """

    def __init__(self, *, hub: Hub | None = None) -> None:
        self.hub = hub if hub is not None else Hub()
        self._routes: list[BaseRoute] = []
        self._app: Router | None = None

    def add(
        self,
        path: str,
        endpoint: type[RealtimeEndpoint],
        *,
        name: str | None = None,
        limits: Limits | None = None,
        authenticator: Authenticator | None = None,
    ) -> None:
        """Route WebSocket connections on ``path`` (Starlette syntax, ``{param}``) to ``endpoint``.

        Args:
            path: the route's path.
            endpoint: a ``RealtimeEndpoint`` subclass.
            name: the route's name (the class name by default).
            limits: this route's limits, instead of the class's ``limits``.
            authenticator: this route's authenticator, instead of the class's.
        """
        if not (isinstance(endpoint, type) and issubclass(endpoint, RealtimeEndpoint)):
            raise ConfigurationError(
                f"RealtimeRouter.add() takes a RealtimeEndpoint subclass, got {endpoint!r}"
            )
        app = functools.partial(endpoint, hub=self.hub, limits=limits, authenticator=authenticator)
        name = name or endpoint.__name__
        self._routes.append(WebSocketRoute(path, app, name=name))
        self._routes.append(Route(path, _probe(app), methods=["GET"], name=f"{name}:probe"))
        self._app = None

    def websocket(
        self, path: str, *, name: str | None = None, limits: Limits | None = None
    ) -> Callable[[E], E]:
        """Class decorator form of ``add``."""

        def register(endpoint: E) -> E:
            self.add(path, endpoint, name=name, limits=limits)
            return endpoint

        return register

    @property
    def routes(self) -> list[BaseRoute]:
        """The routes, for ``Starlette(routes=[...])`` or ``Router(routes=...)``."""
        return list(self._routes)

    # -- lifespan ---------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lifespan(self, app: Any = None) -> AsyncIterator[None]:
        """A lifespan for the host app: starts the hub, and stops it at shutdown."""
        async with self:
            yield

    async def __aenter__(self) -> RealtimeRouter:
        await self.hub.startup()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.hub.shutdown()

    # -- as an application ------------------------------------------------------------------

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Serve the routes; as the top-level app it also runs the hub's lifespan.

        A matching WebSocket goes straight to its endpoint rather than through a Starlette
        ``Router`` and route: every frame of a connection resumes the whole stack of
        coroutines above the endpoint, so each level left out is saved on every message.
        """
        router = self._app
        if router is None:
            router = self._app = Router(routes=self._routes, lifespan=self.lifespan)
        if scope["type"] == "websocket":
            for route in self._routes:
                match, child_scope = route.matches(scope)
                if match is Match.FULL and isinstance(route, WebSocketRoute):
                    scope.update(child_scope)
                    # What Starlette's Router would have set: ``url_for`` needs it.
                    scope.setdefault("router", router)
                    await route.app(scope, receive, send)
                    return
        await router(scope, receive, send)

    def api_router(self, **kwargs: Any) -> APIRouter:
        """A FastAPI ``APIRouter`` with these routes and the hub's lifespan.

        ``app.include_router(router.api_router(), prefix="/ws")`` mounts the endpoints and, as
        FastAPI merges the lifespans of included routers, starts and stops the hub with the app.
        ``kwargs`` go to ``APIRouter``; its ``prefix`` applies to these routes too. Needs
        ``fastapi`` installed.
        """
        try:
            from fastapi import APIRouter
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ConfigurationError(
                "RealtimeRouter.api_router() needs FastAPI: pip install fastapi"
            ) from exc
        api = APIRouter(lifespan=self.lifespan, **kwargs)
        # Added as they are, not through api.add_api_websocket_route (which would wrap each
        # endpoint in FastAPI's dependency handling): so the router's prefix is applied here.
        prefix = api.prefix
        for route in self._routes:
            if prefix and isinstance(route, WebSocketRoute):
                route = WebSocketRoute(prefix + route.path, route.endpoint, name=route.name)
            elif prefix and isinstance(route, Route):
                route = Route(prefix + route.path, route.endpoint, methods=["GET"], name=route.name)
            api.routes.append(route)
        return api


def _probe(factory: Callable[..., RealtimeEndpoint]) -> Callable[[Request], Awaitable[Response]]:
    """An HTTP GET handler that answers what a WebSocket handshake on the route would get."""

    async def probe(request: Request) -> Response:
        offered = request.headers.get("sec-websocket-protocol", "")
        scope = {
            **request.scope,
            "type": "websocket",
            "subprotocols": [part.strip() for part in offered.split(",") if part.strip()],
            "extensions": {},
        }

        async def nothing_to_receive() -> Message:  # admission reads no message
            return {"type": "websocket.disconnect", "code": 1006}

        async def nothing_to_send(message: Message) -> None:  # pragma: no cover - never called
            raise RuntimeError("a handshake probe sends nothing")

        endpoint = factory(scope, nothing_to_receive, nothing_to_send)
        refusal = await endpoint.admission_refusal(endpoint.websocket)
        if refusal is None:
            return PlainTextResponse(
                "a WebSocket handshake here would be accepted: connect with a WebSocket client",
                426,
                headers={"Upgrade": "websocket", "Connection": "Upgrade"},
            )
        return refusal.response(endpoint.limits.retry_after)

    return probe
