"""``rtkit.testing.LiveServer``: what a user's own tests rely on."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

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
