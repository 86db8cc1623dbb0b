"""End to end: the demo app on a real uvicorn, real `websockets` clients, exact counts."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator

import anyio
import httpx2
import msgspec
import pytest
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed

from rtkit.demo import create_app
from rtkit.testing import LiveServer
from tests.live import FAST_PROTOCOL, recv_json, recv_until, send_json

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    """The `websockets` client runs on asyncio only."""
    return "asyncio"


@pytest.fixture(scope="module", params=["websockets-sansio", "wsproto", FAST_PROTOCOL])
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    with LiveServer(create_app(), ws=request.param) as live:
        yield live


async def test_chat_members_each_get_every_message_once_in_order(server: LiveServer) -> None:
    names = [f"user{i}" for i in range(5)]
    per_sender = 20
    clients = [await connect(server.ws_url(f"/ws/chat/count?name={name}")) for name in names]
    outsider = await connect(server.ws_url("/ws/chat/elsewhere?name=out"))
    try:
        for i, ws in enumerate(clients):
            welcome = await recv_json(ws)
            assert welcome["members"] == names[: i + 1]
        for i, ws in enumerate(clients):  # each hears of everyone who came after it
            joined = [(await recv_json(ws))["user"] for _ in range(len(names) - i - 1)]
            assert joined == names[i + 1 :]
        await recv_json(outsider)

        async def talk(ws: ClientConnection, name: str) -> None:
            for n in range(per_sender):
                await send_json(ws, {"type": "say", "text": f"{name}:{n}"})

        async with anyio.create_task_group() as tg:
            for ws, name in zip(clients, names, strict=True):
                tg.start_soon(talk, ws, name)

        total = per_sender * len(names)
        for ws in clients:
            texts = [(await recv_json(ws))["text"] for _ in range(total)]
            assert len(set(texts)) == total  # every message once
            for name in names:  # in the order each sender sent them
                assert [t for t in texts if t.startswith(f"{name}:")] == [
                    f"{name}:{n}" for n in range(per_sender)
                ]
        # Nothing leaked to another room: the outsider's next frame is its own message.
        await send_json(outsider, {"type": "say", "text": "mine"})
        assert (await recv_json(outsider))["text"] == "mine"
    finally:
        for ws in [*clients, outsider]:
            await ws.close()


async def test_leaving_is_announced_and_presence_updated(server: LiveServer) -> None:
    async with connect(server.ws_url("/ws/chat/leave?name=ann")) as ann:
        await recv_json(ann)
        async with connect(server.ws_url("/ws/chat/leave?name=bob")) as bob:
            await recv_json(bob)
            assert await recv_json(ann) == {"type": "joined", "room": "leave", "user": "bob"}
        assert await recv_json(ann) == {"type": "left", "room": "leave", "user": "bob"}
        async with connect(server.ws_url("/ws/chat/leave?name=cid")) as cid:
            assert (await recv_json(cid))["members"] == ["ann", "cid"]


async def test_topic_subscribers_get_exactly_what_was_published_and_nothing_after_unsubscribe(
    server: LiveServer,
) -> None:
    events = 50
    async with (
        connect(server.ws_url("/ws/topics")) as stayer,
        connect(server.ws_url("/ws/topics")) as leaver,
        connect(server.ws_url("/ws/topics/scores")) as by_path,
        connect(server.ws_url("/ws/topics")) as publisher,
    ):
        for ws in (stayer, leaver):
            await send_json(ws, {"type": "subscribe", "topic": "scores"})
            assert await recv_json(ws) == {"type": "subscribed", "topic": "scores"}
        half = events // 2
        for n in range(events):
            await send_json(publisher, {"type": "publish", "topic": "scores", "data": n, "ref": n})
            if n == half - 1:
                # Once the first half is confirmed published, the leaver unsubscribes.
                acks = [(await recv_json(publisher))["ref"] for _ in range(half)]
                assert acks == list(range(half))
                await send_json(leaver, {"type": "unsubscribe", "topic": "scores"})
        acks = [(await recv_json(publisher))["ref"] for _ in range(events - half)]
        assert acks == list(range(half, events))
        for ws in (stayer, by_path):
            assert [(await recv_json(ws))["data"] for _ in range(events)] == list(range(events))
        frames = await recv_until(leaver, "unsubscribed")
        received = [f["data"] for f in frames if f["type"] == "event"]
        assert len(received) >= half
        assert received == list(range(len(received)))
        # After `unsubscribed` nothing of the topic comes: the next frame answers this request.
        await send_json(leaver, {"type": "subscribe", "topic": "sentinel"})
        assert await recv_json(leaver) == {"type": "subscribed", "topic": "sentinel"}


async def test_a_task_posted_over_http_reaches_subscribers_live(server: LiveServer) -> None:
    async with connect(server.ws_url("/ws/topics/tasks")) as ws, httpx2.AsyncClient() as http:
        created = await http.post(server.http_url("/tasks"), json={"title": "ship", "description": "v1"})
        assert created.status_code == 201
        task = created.json()
        assert set(task) == {"id", "title", "description", "created_at"}
        assert await recv_json(ws) == {"type": "event", "topic": "tasks", "data": task}
        listed = await http.get(server.http_url("/tasks"))
        assert task in listed.json()


async def test_msgpack_clients_and_json_clients_share_a_topic(server: LiveServer) -> None:
    async with (
        connect(server.ws_url("/ws/topics/mixed"), subprotocols=["rtkit.msgpack"]) as packed,  # type: ignore[list-item]
        connect(server.ws_url("/ws/topics/mixed")) as plain,
    ):
        assert packed.subprotocol == "rtkit.msgpack"
        await packed.send(msgspec.msgpack.encode({"type": "publish", "topic": "mixed", "data": [1, "x"]}))
        expected = {"type": "event", "topic": "mixed", "data": [1, "x"]}
        with anyio.fail_after(10):
            assert msgspec.msgpack.decode(await packed.recv(decode=False)) == expected
        assert await recv_json(plain) == expected


async def test_echo_serves_many_clients_at_once(server: LiveServer) -> None:
    async def one(n: int) -> None:
        async with connect(server.ws_url("/ws/echo")) as ws:
            for i in range(20):
                await ws.send(f"{n}-{i}")
                with anyio.fail_after(10):
                    assert await ws.recv() == f"{n}-{i}"
            await ws.send(bytes([n, 0, 255]))
            with anyio.fail_after(10):
                assert await ws.recv() == bytes([n, 0, 255])

    async with anyio.create_task_group() as tg:
        for n in range(10):
            tg.start_soon(one, n)


async def test_bad_frames_get_error_frames_over_the_wire(server: LiveServer) -> None:
    async with connect(server.ws_url("/ws/topics")) as ws:
        await ws.send("{oops")
        error = await recv_json(ws)
        assert (error["type"], error["code"]) == ("error", "invalid_message")
        await ws.send(b"\x01binary")
        assert (await recv_json(ws))["code"] == "invalid_message"
        await send_json(ws, {"type": "subscribe", "topic": "still-open"})
        assert await recv_json(ws) == {"type": "subscribed", "topic": "still-open"}


async def test_the_demo_answers_health_and_serves_the_page(server: LiveServer) -> None:
    async with httpx2.AsyncClient() as http:
        health = await http.get(server.http_url("/health"))
        assert health.status_code == 200
        assert health.json()["status"] == "ok"
        page = await http.get(server.http_url("/"))
        assert page.status_code == 200
        assert "text/html" in page.headers["content-type"]
        metrics = await http.get(server.http_url("/metrics"))
        assert metrics.status_code == 200
        assert metrics.headers["content-type"].startswith("text/plain; version=0.0.4")
        assert "# TYPE rtkit_connections_open gauge" in metrics.text
        bad = await http.post(
            server.http_url("/tasks"), content=b"{}", headers={"content-type": "application/json"}
        )
        assert bad.status_code == 422
        assert "title" in bad.json()["detail"]


async def test_a_refused_chat_name_is_an_http_403(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR), pytest.raises(Exception, match="403"):
        async with connect(server.ws_url(f"/ws/chat/x?name={'n' * 100}")):
            pass
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR]


async def test_closing_the_client_mid_stream_is_quiet(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with connect(server.ws_url("/ws/topics/firehose")) as watcher:
            doomed = await connect(server.ws_url("/ws/topics/firehose"))
            doomed.transport.abort()  # vanish without a closing handshake
            async with connect(server.ws_url("/ws/topics")) as pub:
                for n in range(20):
                    await send_json(pub, {"type": "publish", "topic": "firehose", "data": n})
                assert [(await recv_json(watcher))["data"] for _ in range(20)] == list(range(20))
            with pytest.raises(ConnectionClosed):
                await doomed.recv()
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], json.dumps(
        [r.getMessage() for r in caplog.records]
    )
