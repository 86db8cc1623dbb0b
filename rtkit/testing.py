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

# uvicorn.Config's options that say where to listen, which LiveServer decides itself.
_WHERE_TO_LISTEN = frozenset({"port", "uds", "fd"})


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

    The server binds a free port on ``host`` itself at each start: read it from ``.port``
    (or use ``url``, ``ws_url()``, ``http_url()``) once started.

    Args:
        app: the ASGI application.
        host: the interface to bind (loopback by default).
        start_timeout: seconds to wait for the server to start, and, when ``stop()`` has to
            cut connections off, for it to exit after that.
        stop_timeout: seconds ``stop()`` gives open connections and running handlers to end
            by themselves before it cuts them off.
        **uvicorn_options: passed on to ``uvicorn.Config`` (``ws="wsproto"``, ...), except
            ``port``, ``uds`` and ``fd``: where to listen is the server's choice.

    Raises:
        TypeError: ``uvicorn_options`` names ``port``, ``uds`` or ``fd``.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        host: str = "127.0.0.1",
        start_timeout: float = 15.0,
        stop_timeout: float = 5.0,
        **uvicorn_options: Any,
    ) -> None:
        # uvicorn would ignore these (it is handed a socket bound here) or, for port, clash with
        # the port=0 below with an obscure "multiple values" error: say why instead.
        clashes = sorted(_WHERE_TO_LISTEN.intersection(uvicorn_options))
        if clashes:
            named = ", ".join(f"{option}=" for option in clashes)
            raise TypeError(
                f"LiveServer does not take {named}: it listens on a free port of its host "
                f"({host!r}), chosen at each start; read it from .port once started"
            )
        uvicorn_options.setdefault("log_level", "warning")
        uvicorn_options.setdefault("lifespan", "on")
        self.config = uvicorn.Config(app, host=host, port=0, **uvicorn_options)
        self.host = host
        self.port = 0
        self.start_timeout = start_timeout
        self.stop_timeout = stop_timeout
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
            # uvicorn closes the socket when it shuts down a server that started, but not when
            # the start failed (the app's lifespan did): close it here on every path. Closing
            # twice is harmless.
            sock.close()
            self._server.ready.set()

    def start(self) -> None:
        """Start serving; returns once connections are accepted. A stopped server can be
        started again (on a new port).

        Raises:
            RuntimeError: the server did not start (its error is chained), is running, or is
                still running after a start or a ``stop()`` that failed (see ``stop()``).
        """
        if self._thread is not None:
            raise RuntimeError(f"the server on {self.url} is running already")
        # A fresh uvicorn server each time: one that ran keeps its exit flag and start event.
        self._server = _Server(self.config)
        self._error = None
        family, kind, proto, _, address = socket.getaddrinfo(self.host, 0, type=socket.SOCK_STREAM)[0]
        sock = socket.socket(family, kind, proto)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            self.port = sock.getsockname()[1]
            thread = threading.Thread(target=self._run, args=(sock,), name="rtkit-live-server", daemon=True)
            thread.start()
        except BaseException:
            sock.close()  # no thread owns it yet
            raise
        self._thread = thread  # from here on, the thread closes the socket
        if not self._server.ready.wait(self.start_timeout):
            # Stuck in its startup, where uvicorn looks at no exit flag: waiting longer would not
            # help. Flag it for if it ever gets through; until then it is still running.
            self._server.should_exit = self._server.force_exit = True
            raise RuntimeError(
                f"the server on {self.url} did not start within {self.start_timeout} s "
                "(is the app's lifespan startup stuck?)"
            )
        if not self._server.started:
            self.stop()  # its start failed: the thread is ending
            # Read only now: the thread records its error after it has signalled `ready`.
            raise RuntimeError(f"the server on {self.url} did not start") from self._error

    def stop(self) -> None:
        """Stop the server and wait for its thread.

        Open connections and running handlers get ``stop_timeout`` seconds to end; then the
        server is forced to exit (its tasks, the app's lifespan included, are cancelled, so
        the lifespan's shutdown is cut short) and gets ``start_timeout`` seconds more.

        Raises:
            RuntimeError: the server is still running even so (something blocks its event
                loop, or ignores cancellation). It is then still counted as running: ``start()``
                is refused, and ``stop()`` may be called again.
        """
        self._server.should_exit = True
        thread = self._thread
        if thread is None:
            return
        thread.join(self.stop_timeout)
        if thread.is_alive():
            # uvicorn's shutdown waits without limit for connections and handlers to end.
            self._server.force_exit = True
            thread.join(self.start_timeout)
        if thread.is_alive():
            # Not forgotten: a server that still runs must not be taken for a stopped one.
            raise RuntimeError(f"the server on {self.url} did not stop: {self._stuck()}")
        self._thread = None

    def _stuck(self) -> str:
        """What keeps a server that was told to exit, and then forced to, from doing so."""
        if not self._server.started:
            return (
                f"its start has not finished after {self.start_timeout} s (is the app's "
                "lifespan startup stuck?)"
            )
        state = self._server.server_state
        return (
            f"it was forced to exit after {self.stop_timeout} s, yet {len(state.connections)} "
            f"connection(s) and {len(state.tasks)} handler task(s) remain after "
            f"{self.start_timeout} s more: something blocks its event loop or ignores cancellation"
        )

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
