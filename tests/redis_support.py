"""Helpers shared by the Redis tests: finding Redis, a private redis-server, a TCP blackhole.

Tests that need Redis skip with a clear reason when it is missing, unless the environment sets
``RTKIT_REQUIRE_REDIS=1``: then they fail with that reason (for CI, where a skip would hide a
broken setup). ``RTKIT_REDIS_URL`` names the shared server (default redis://127.0.0.1:6379/0).
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import os
import shutil
import socket
import subprocess
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from typing import NoReturn

import anyio
import pytest

__all__ = [
    "REDIS_URL",
    "BlackholeProxy",
    "Recorder",
    "RedisServer",
    "free_port",
    "poll",
    "poll_async",
    "private_redis_server",
    "require_redis",
    "skip_or_fail",
    "unique_prefix",
]

REDIS_URL = os.environ.get("RTKIT_REDIS_URL", "redis://127.0.0.1:6379/0")


def skip_or_fail(reason: str) -> NoReturn:
    """Skip the test, or fail it when ``RTKIT_REQUIRE_REDIS=1``."""
    if os.environ.get("RTKIT_REQUIRE_REDIS") == "1":
        pytest.fail(f"{reason} (and RTKIT_REQUIRE_REDIS=1 requires it)", pytrace=False)
    pytest.skip(reason, allow_module_level=True)


@functools.cache
def _unreachable_reason(url: str) -> str | None:
    try:
        import redis
    except ImportError:
        return "the redis package is not installed: pip install 'rtkit[redis]'"
    client = redis.Redis.from_url(url, socket_connect_timeout=1, socket_timeout=1)
    try:
        client.ping()
    except (redis.RedisError, OSError) as exc:
        return f"no Redis reachable at {url} (set RTKIT_REDIS_URL): {exc}"
    finally:
        client.close()
    return None


def require_redis() -> str:
    """The shared Redis URL, or skip (fail under ``RTKIT_REQUIRE_REDIS=1``) if it is down."""
    reason = _unreachable_reason(REDIS_URL)
    if reason is not None:
        skip_or_fail(reason)
    return REDIS_URL


def unique_prefix() -> str:
    """A key prefix no other test uses."""
    return f"rtkit-test-{uuid.uuid4().hex[:12]}"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def poll(condition: Callable[[], bool], *, step: float = 0.01) -> float:
    """Check ``condition`` every ``step`` seconds until it holds; return the seconds it took.

    Only for behaviour that is about time (a health bound, an expiry, a reconnect), where no
    event exists to wait on; the caller bounds it with ``anyio.fail_after``.
    """
    start = anyio.current_time()
    while not condition():  # noqa: ASYNC110 - no event marks a health change or an expiry
        await anyio.sleep(step)
    return anyio.current_time() - start


async def poll_async(condition: Callable[[], Awaitable[bool]], *, step: float = 0.05) -> float:
    """Like ``poll``, for a condition that must ask Redis."""
    start = anyio.current_time()
    while not await condition():  # noqa: ASYNC110 - no event marks an expiry or a restore
        await anyio.sleep(step)
    return anyio.current_time() - start


class Recorder:
    """A ``Receiver`` that records what a backend hands it, and lets a test wait for it."""

    def __init__(self) -> None:
        self.messages: list[tuple[str, bytes]] = []
        self.gaps: list[tuple[str, int]] = []
        self._changed = anyio.Event()

    def deliver(self, channel: str, data: bytes) -> None:
        """Record a message."""
        self.messages.append((channel, data))
        self._changed.set()

    def gap(self, channel: str, missed: int) -> None:
        """Record a gap notice."""
        self.gaps.append((channel, missed))
        self._changed.set()

    def received(self, channel: str) -> list[bytes]:
        """The payloads of ``channel``, in arrival order."""
        return [data for ch, data in self.messages if ch == channel]

    async def wait_for(self, condition: Callable[[], bool]) -> None:
        """Wait until ``condition`` holds, re-checking after each delivery or gap notice.

        The caller bounds the wait with ``anyio.fail_after``.
        """
        while not condition():
            await self._changed.wait()
            self._changed = anyio.Event()


class RedisServer:
    """A private ``redis-server`` on a spare port, which a test may kill and restart."""

    def __init__(self, binary: str) -> None:
        self.binary = binary
        self.port = free_port()
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """Where it listens."""
        return f"redis://127.0.0.1:{self.port}/0"

    def _spawn(self) -> None:
        args = [self.binary, "--port", str(self.port), "--bind", "127.0.0.1"]
        args += ["--save", "", "--appendonly", "no"]
        self._process = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    def _answers(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def start(self) -> None:
        """Start it and wait until it answers (from synchronous code: a fixture)."""
        self._spawn()
        with anyio.from_thread.start_blocking_portal() as portal:
            portal.call(self._wait_ready)

    async def restart(self) -> None:
        """Start it again on the same port, and wait until it answers."""
        self._spawn()
        await self._wait_ready()

    async def _wait_ready(self) -> None:
        with anyio.fail_after(10):
            while not await anyio.to_thread.run_sync(self._answers):
                process = self._process
                if process is not None and process.poll() is not None:
                    raise RuntimeError(f"redis-server exited with {process.returncode}")
                await anyio.sleep(0.01)

    def kill(self) -> None:
        """SIGKILL it: no goodbye to its clients, as in a crash."""
        process, self._process = self._process, None
        if process is not None:
            process.kill()
            process.wait()


@contextlib.contextmanager
def private_redis_server() -> Iterator[RedisServer]:
    """A fresh private redis-server, killed on exit (skips, or fails, without the binary)."""
    binary = shutil.which("redis-server") or (
        "/usr/bin/redis-server" if os.path.exists("/usr/bin/redis-server") else None
    )
    if binary is None:
        skip_or_fail("no redis-server binary on PATH to start a private server")
    server = RedisServer(binary)
    server.start()
    try:
        yield server
    finally:
        server.kill()


class BlackholeProxy:
    """A TCP proxy to a local port that a test can turn into a blackhole.

    While blackholed it accepts connections and reads what comes in, but forwards nothing in
    either direction: the connections stay open and carry nothing, as behind a dead router.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = 0
        self._flowing = asyncio.Event()
        self._flowing.set()
        self._server: asyncio.Server | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self._writers: list[asyncio.StreamWriter] = []

    @property
    def url(self) -> str:
        """The URL to give a client instead of the target's."""
        return f"redis://127.0.0.1:{self.port}/0"

    def blackhole(self) -> None:
        """Stop forwarding, on every connection, old and new."""
        self._flowing.clear()

    def restore(self) -> None:
        """Forward again."""
        self._flowing.set()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[BlackholeProxy]:
        """Listen on a spare port for the duration of the block, then close everything."""
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            self._server.close()
            await self._server.wait_closed()
            # Cut every connection, so that each pump ends on its own: asyncio logs an error
            # for a cancelled connection handler.
            self.restore()
            for writer in self._writers:
                writer.transport.abort()
            if self._tasks:
                await asyncio.wait(list(self._tasks))

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        if task is None:  # pragma: no cover - start_server runs each client in a task
            return
        self._tasks.add(task)
        self._writers.append(writer)
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            self._tasks.discard(task)
            return
        self._writers.append(up_writer)
        try:
            await asyncio.gather(self._pump(reader, up_writer), self._pump(up_reader, writer))
        finally:
            self._tasks.discard(task)

    async def _pump(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while data := await reader.read(65536):
                await self._flowing.wait()
                writer.write(data)
                await writer.drain()
        except OSError:
            pass
        finally:
            writer.close()
