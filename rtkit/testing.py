"""Helpers for testing applications built on rtkit over real sockets.

``LiveServer`` runs an ASGI app on uvicorn, on 127.0.0.1 and a free port, in a background
thread, and returns only once the server accepts connections (its lifespan has run)::

    from rtkit.testing import LiveServer

    with LiveServer(app) as server:
        async with websockets.connect(server.ws_url("/ws/chat/lobby")) as ws:
            ...

Starlette's ``TestClient`` remains the quickest way to test an endpoint without a network.
"""

from __future__ import annotations

import asyncio
import socket
import threading
from types import TracebackType
from typing import Any

import uvicorn

from rtkit._types import ASGIApp

__all__ = ["LiveServer"]


class _Server(uvicorn.Server):
    """A uvicorn server that says when it has started, or given up trying."""

    def __init__(self, config: uvicorn.Config) -> None:
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        try:
            await super().startup(sockets=sockets)
        finally:
            self.ready.set()

    def install_signal_handlers(self) -> None:
        """Leave signals alone: this server runs in a worker thread."""


class LiveServer:
    """An ASGI app served by uvicorn in a background thread (a context manager).

    Args:
        app: the ASGI application.
        host: the interface to bind (loopback by default).
        start_timeout: seconds to wait for the server to start.
        **uvicorn_options: passed on to ``uvicorn.Config`` (``ws="wsproto"``, ...).
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
        **uvicorn_options: Any,
    ) -> None:
        uvicorn_options.setdefault("log_level", "warning")
        uvicorn_options.setdefault("lifespan", "on")
        self.config = uvicorn.Config(app, host=host, port=0, **uvicorn_options)
        self.host = host
        self.port = 0
        self.start_timeout = start_timeout
        self._server = _Server(self.config)
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    @property
    def _authority(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host  # an IPv6 literal
        return f"{host}:{self.port}"

    @property
    def url(self) -> str:
        """``http://host:port`` of the running server."""
        return f"http://{self._authority}"

    def ws_url(self, path: str = "/") -> str:
        """The ``ws://`` URL of ``path`` on the running server."""
        return f"ws://{self._authority}{path}"

    def http_url(self, path: str = "/") -> str:
        """The ``http://`` URL of ``path`` on the running server."""
        return f"{self.url}{path}"

    def _run(self, sock: socket.socket) -> None:
        try:
            asyncio.run(self._server.serve(sockets=[sock]))
        except BaseException as exc:  # reported to the thread that waits for the start
            self._error = exc
        finally:
            self._server.ready.set()

    def start(self) -> None:
        """Start serving; returns once connections are accepted. A stopped server can be
        started again (on a new port).

        Raises:
            RuntimeError: the server did not start (its error is chained), or is running.
        """
        if self._thread is not None:
            raise RuntimeError(f"the server on {self.url} is running already")
        # A fresh uvicorn server each time: one that ran keeps its exit flag and start event.
        self._server = _Server(self.config)
        self._error = None
        family, kind, proto, _, address = socket.getaddrinfo(self.host, 0, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        self.port = sock.getsockname()[1]
        self._thread = threading.Thread(target=self._run, args=(sock,), name="rtkit-live-server", daemon=True)
        self._thread.start()
        started = self._server.ready.wait(self.start_timeout)
        if not started or not self._server.started:
            self.stop()
            raise RuntimeError(f"the server on {self.url} did not start") from self._error

    def stop(self) -> None:
        """Stop the server and wait for its thread."""
        self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(self.start_timeout)
            self._thread = None

    def __enter__(self) -> LiveServer:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()
