"""``rtkit.testing.LiveServer``: what a user's own tests rely on."""

from __future__ import annotations

import contextlib
import socket
import threading
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import anyio
import anyio.to_thread
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket
from websockets.sync.client import connect

from rtkit.testing import LiveServer


async def _hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


APP = Starlette(routes=[Route("/", _hello)])


def _get(server: LiveServer) -> str:
    with urllib.request.urlopen(server.http_url("/"), timeout=10) as answer:
        return str(answer.read().decode())


def test_a_stopped_server_starts_again() -> None:
    server = LiveServer(APP)
    for _ in range(2):
        with server:
            assert _get(server) == "hello"
        with pytest.raises(urllib.error.URLError, match="refused"):  # stopped: nothing listens
            _get(server)


def test_starting_a_running_server_is_refused() -> None:
    with LiveServer(APP) as server, pytest.raises(RuntimeError, match="running already"):
        server.start()


def _has_ipv6_loopback() -> bool:
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_STREAM) as probe:
            probe.bind(("::1", 0))
    except OSError:
        return False
    return True


@pytest.mark.skipif(not _has_ipv6_loopback(), reason="this machine has no IPv6 loopback (::1)")
def test_an_ipv6_host_is_served_and_bracketed_in_urls() -> None:
    with LiveServer(APP, host="::1") as server:
        assert server.url == f"http://[::1]:{server.port}"
        assert server.ws_url("/ws") == f"ws://[::1]:{server.port}/ws"
        assert _get(server) == "hello"


@pytest.mark.parametrize("option", ["port", "uds", "fd"])
def test_where_to_listen_is_refused_with_the_reason(option: str) -> None:
    options: dict[str, Any] = {option: 8123}
    with pytest.raises(TypeError, match=rf"{option}=: it listens on a free port .* read it from \.port"):
        LiveServer(APP, **options)


@contextlib.asynccontextmanager
async def _failing_lifespan(app: Starlette) -> AsyncIterator[None]:
    raise ValueError("no database")
    yield  # pragma: no cover


def test_a_failed_start_frees_its_port() -> None:
    server = LiveServer(Starlette(lifespan=_failing_lifespan))
    with pytest.raises(RuntimeError, match="did not start"):
        server.start()
    # Bound by the server without listening: binding it again, without SO_REUSEADDR, fails
    # with EADDRINUSE for as long as that socket is open.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", server.port))


def test_a_start_that_hangs_is_not_forgotten() -> None:
    released = threading.Event()

    @contextlib.asynccontextmanager
    async def hanging_lifespan(app: Starlette) -> AsyncIterator[None]:
        await anyio.to_thread.run_sync(released.wait, 30)  # a startup that waits on something
        yield

    server = LiveServer(Starlette(lifespan=hanging_lifespan), start_timeout=0.2)
    try:
        with pytest.raises(RuntimeError, match=r"did not start within 0\.2 s"):
            server.start()
        # Its thread still runs: a second server must not be started beside it.
        with pytest.raises(RuntimeError, match="running already"):
            server.start()
    finally:
        released.set()
        server.start_timeout = 15.0  # bounds the wait for the released thread to end
        server.stop()
    with server:  # really stopped: it starts again
        assert server.port != 0


def _handler_app(
    handler: Callable[[WebSocket], Awaitable[None]], lifespan_ended: threading.Event
) -> Starlette:
    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        try:
            yield
        finally:  # runs also when the lifespan task is cancelled
            lifespan_ended.set()

    return Starlette(routes=[WebSocketRoute("/ws", handler)], lifespan=lifespan)


def test_stop_cuts_off_a_handler_that_does_not_end() -> None:
    entered, cancelled, lifespan_ended = threading.Event(), threading.Event(), threading.Event()

    async def endless(websocket: WebSocket) -> None:
        await websocket.accept()
        entered.set()
        try:
            await anyio.sleep_forever()  # a handler that never returns by itself
        finally:
            cancelled.set()

    server = LiveServer(_handler_app(endless, lifespan_ended), stop_timeout=0.1)
    with server:
        with connect(server.ws_url("/ws")):
            assert entered.wait(10)
        # The client has left; the handler runs on, and uvicorn would wait for it forever.
        assert not cancelled.is_set()
    assert cancelled.is_set()
    assert lifespan_ended.is_set()  # the server thread, which runs the lifespan, has ended
    with pytest.raises(urllib.error.URLError, match="refused"):
        _get(server)


def test_stop_reports_a_server_it_cannot_stop() -> None:
    entered, released, lifespan_ended = threading.Event(), threading.Event(), threading.Event()

    async def blocking(websocket: WebSocket) -> None:
        await websocket.accept()
        entered.set()
        released.wait(30)  # a blocking call: the event loop stops, cancelling cannot reach it

    server = LiveServer(_handler_app(blocking, lifespan_ended), stop_timeout=0.1)
    server.start()
    try:
        with connect(server.ws_url("/ws")):
            assert entered.wait(10)
            # The loop is blocked, so it cannot exit however long it is given: keep this short.
            server.start_timeout = 0.2
            with pytest.raises(RuntimeError, match=r"did not stop: .*blocks its event loop"):
                server.stop()
            assert not lifespan_ended.is_set()
            with pytest.raises(RuntimeError, match="running already"):
                server.start()
            released.set()
    finally:
        released.set()
        server.start_timeout = 15.0  # bounds the wait for the released thread to end
        server.stop()
    assert lifespan_ended.is_set()
