"""End to end across processes: `rtkit serve` servers sharing Redis, clients on each of them."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from types import TracebackType

import anyio
import httpx2
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.live import recv_json, send_json
from tests.redis_support import free_port, require_redis, unique_prefix

pytestmark = [pytest.mark.anyio, pytest.mark.redis]


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


class Serve:
    """``python -m rtkit serve`` in a subprocess, ready once every worker has started."""

    def __init__(self, redis_url: str, prefix: str, *, workers: int = 1) -> None:
        self.port = free_port()
        self.workers = workers
        command = [sys.executable, "-m", "rtkit", "serve", "--port", str(self.port)]
        command += ["--redis-url", redis_url, "--redis-prefix", prefix, "--workers", str(workers)]
        command += ["--log-level", "info", "--rate", "0"]
        self.process = subprocess.Popen(
            command, stderr=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        self.log: list[str] = []
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        started = 0
        for line in self.process.stderr:
            self.log.append(line)
            started += "Application startup complete" in line
            if started >= self.workers:
                self._ready.set()
        self._ready.set()  # the process ended: let the waiter see it

    def __enter__(self) -> Serve:
        if not self._ready.wait(30) or self.process.poll() is not None:
            self.__exit__(None, None, None)
            raise RuntimeError("rtkit serve did not start:\n" + "".join(self.log))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.process.terminate()
        self.process.wait(30)
        self._reader.join(5)
        if self.process.stderr is not None:
            self.process.stderr.close()

    def ws(self, path: str) -> str:
        return f"ws://127.0.0.1:{self.port}{path}"

    def http(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"


@pytest.fixture(scope="module")
def pair() -> Iterator[tuple[Serve, Serve]]:
    """Two single-worker servers sharing one Redis namespace."""
    url, prefix = require_redis(), unique_prefix()
    with Serve(url, prefix) as first, Serve(url, prefix) as second:
        yield first, second


async def test_a_chat_room_spans_two_servers(pair: tuple[Serve, Serve]) -> None:
    a, b = pair
    names = ["a1", "b1", "a2", "b2"]
    clients: list[ClientConnection] = []
    try:
        for i, name in enumerate(names):
            server = a if name.startswith("a") else b
            clients.append(await connect(server.ws(f"/ws/chat/span?name={name}")))
            welcome = await recv_json(clients[-1])
            assert welcome["members"] == names[: i + 1]  # presence is shared
            for earlier in clients[:-1]:
                assert await recv_json(earlier) == {"type": "joined", "room": "span", "user": name}
        per_sender = 10
        for n in range(per_sender):
            for ws, name in zip(clients, names, strict=True):
                await send_json(ws, {"type": "say", "text": f"{name}:{n}"})
        for ws in clients:
            texts = [(await recv_json(ws))["text"] for _ in range(per_sender * len(names))]
            assert len(set(texts)) == len(texts)
            for name in names:  # each sender's messages in the order they were sent
                assert [t for t in texts if t.startswith(f"{name}:")] == [
                    f"{name}:{n}" for n in range(per_sender)
                ]
        await clients.pop().close()  # b2 leaves
        for ws in clients:
            assert await recv_json(ws) == {"type": "left", "room": "span", "user": "b2"}
        async with connect(a.ws("/ws/chat/span?name=late")) as late:
            assert (await recv_json(late))["members"] == ["a1", "b1", "a2", "late"]
    finally:
        for ws in clients:
            await ws.close()


async def test_topic_events_cross_servers_in_order_and_stop_after_unsubscribe(
    pair: tuple[Serve, Serve],
) -> None:
    a, b = pair
    async with connect(b.ws("/ws/topics")) as subscriber, connect(a.ws("/ws/topics")) as publisher:
        await send_json(subscriber, {"type": "subscribe", "topic": "cross"})
        assert await recv_json(subscriber) == {"type": "subscribed", "topic": "cross"}
        for n in range(100):
            await send_json(publisher, {"type": "publish", "topic": "cross", "data": n})
        assert [(await recv_json(subscriber))["data"] for _ in range(100)] == list(range(100))
        await send_json(subscriber, {"type": "unsubscribe", "topic": "cross"})
        assert await recv_json(subscriber) == {"type": "unsubscribed", "topic": "cross"}
        await send_json(publisher, {"type": "publish", "topic": "cross", "data": "late", "ref": 1})
        assert await recv_json(publisher) == {"type": "published", "topic": "cross", "ref": 1}
        # The subscriber also listens to a marker topic published after the late event: the
        # marker arriving first (and alone) shows the late event never came.
        await send_json(subscriber, {"type": "subscribe", "topic": "marker"})
        await recv_json(subscriber)
        await send_json(publisher, {"type": "publish", "topic": "marker", "data": "end"})
        assert await recv_json(subscriber) == {"type": "event", "topic": "marker", "data": "end"}


async def test_a_task_posted_on_one_server_reaches_the_other(pair: tuple[Serve, Serve]) -> None:
    a, b = pair
    async with connect(b.ws("/ws/topics/tasks")) as watcher, httpx2.AsyncClient() as http:
        created = await http.post(a.http("/tasks"), json={"title": "cross", "description": "process"})
        assert created.status_code == 201
        task = created.json()
        assert await recv_json(watcher) == {"type": "event", "topic": "tasks", "data": task}
        listed = (await http.get(b.http("/tasks"))).json()
        assert task in listed
        health = (await http.get(b.http("/health"))).json()
        assert health["backend"]["state"] == "up"
        assert "rtkit_backend_up 1" in (await http.get(b.http("/metrics"))).text


async def test_several_workers_behind_one_port_share_the_room() -> None:
    url = require_redis()
    with Serve(url, unique_prefix(), workers=2) as server:
        clients: list[ClientConnection] = []
        try:
            for i in range(6):  # one at a time, so that each join is announced to all before it
                clients.append(await connect(server.ws(f"/ws/chat/workers?name=u{i}")))
                assert len((await recv_json(clients[-1]))["members"]) == i + 1
                for earlier in clients[:-1]:
                    assert (await recv_json(earlier))["user"] == f"u{i}"
            for i, ws in enumerate(clients):
                await send_json(ws, {"type": "say", "text": f"m{i}"})
            with anyio.fail_after(20):
                for ws in clients:
                    got = sorted([(await recv_json(ws))["text"] for _ in range(len(clients))])
                    assert got == sorted(f"m{i}" for i in range(len(clients)))
        finally:
            for ws in clients:
                await ws.close()
        pids = {line.split("[")[1].split("]")[0] for line in server.log if "Started server process" in line}
        assert len(pids) == 2  # two worker processes really served


async def test_a_redis_restart_mid_stream_is_survived_and_reported_to_clients() -> None:
    from rtkit import Hub
    from rtkit.backends.redis import RedisBackend
    from rtkit.demo import create_app
    from rtkit.testing import LiveServer
    from tests.redis_support import poll, private_redis_server

    with private_redis_server() as redis_server:
        backend = RedisBackend(redis_server.url, prefix=unique_prefix(), timeout=0.5, ping_interval=0.25)
        with LiveServer(create_app(hub=Hub(backend))) as server:
            async with (
                connect(server.ws_url("/ws/topics/stream")) as subscriber,
                connect(server.ws_url("/ws/topics")) as publisher,
                httpx2.AsyncClient() as http,
            ):
                for n in range(5):
                    await send_json(publisher, {"type": "publish", "topic": "stream", "data": n})
                assert [(await recv_json(subscriber))["data"] for _ in range(5)] == list(range(5))

                redis_server.kill()
                with anyio.fail_after(5):
                    await poll(lambda: backend.health().state == "down")
                health = await http.get(server.http_url("/health"))
                assert (health.status_code, health.json()["backend"]["state"]) == (503, "down")
                await send_json(publisher, {"type": "publish", "topic": "stream", "data": "lost", "ref": 1})
                refused = await recv_json(publisher)
                assert (refused["code"], refused["ref"]) == ("unavailable", 1)  # the socket stays
                assert (await http.post(server.http_url("/tasks"), json={"title": "t"})).status_code == 503

                await redis_server.restart()
                # Once resubscribed, the subscriber is told that it may have missed something.
                assert await recv_json(subscriber) == {"type": "gap", "missed": 1, "topic": "stream"}
                await send_json(publisher, {"type": "publish", "topic": "stream", "data": "back"})
                assert await recv_json(subscriber) == {"type": "event", "topic": "stream", "data": "back"}
                assert (await http.get(server.http_url("/health"))).json()["backend"]["state"] == "up"
                metrics = (await http.get(server.http_url("/metrics"))).text
                assert "rtkit_backend_reconnects_total 1" in metrics
                assert "rtkit_gaps_total 2" in metrics  # the stream and the task store's topic
