"""The demo app's HTTP side and its behaviour when the backend is out of reach."""

from __future__ import annotations

import json
from collections.abc import Iterator

import msgspec
import pytest
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.types import ASGIApp, Message, Receive, Scope, Send
from starlette.websockets import WebSocketDisconnect

from rtkit import BackendUnavailableError, ConfigurationError, Hub, Limits, MemoryBackend
from rtkit.backends.base import BackendHealth
from rtkit.cli import main
from rtkit.demo.app import SETTINGS_ENV, DemoSettings, app_from_environment, create_app
from rtkit.demo.tasks import DESCRIPTION_MAX, MAX_BODY_BYTES, TITLE_MAX, NewTask, TaskStore


class Flaky(MemoryBackend):
    """A backend that can be switched off, as Redis is in an outage."""

    down = False

    async def publish(self, channel: str, data: bytes) -> None:
        if self.down:
            raise BackendUnavailableError("redis: connection refused")
        await super().publish(channel, data)

    async def subscribe(self, channel: str) -> None:
        if self.down:
            raise BackendUnavailableError("redis: connection refused")
        await super().subscribe(channel)

    def health(self) -> BackendHealth:
        return BackendHealth(state="down" if self.down else "up", last_error="refused" if self.down else None)


@pytest.fixture
def backend() -> Flaky:
    return Flaky()


@pytest.fixture
def client(backend: Flaky) -> Iterator[TestClient]:
    with TestClient(create_app(hub=Hub(backend))) as test_client:
        yield test_client


def test_tasks_are_created_listed_and_validated(client: TestClient) -> None:
    created = client.post("/tasks", json={"title": "a", "description": "b"})
    assert created.status_code == 201
    task = created.json()
    assert isinstance(task["id"], int)
    assert client.get("/tasks").json() == [task]
    for body, reason in [
        ({"description": "x"}, "missing required field `title`"),
        ({"title": ""}, "Expected `str` of length >= 1"),
        ({"title": "t", "extra": 1}, "unknown field `extra`"),
    ]:
        bad = client.post("/tasks", json=body)
        assert bad.status_code == 422
        assert reason in bad.json()["detail"]
    not_json = client.post("/tasks", content=b"not json", headers={"content-type": "application/json"})
    assert not_json.status_code == 422


def test_the_store_learns_tasks_published_elsewhere(client: TestClient) -> None:
    other = {"id": 7, "title": "from another worker", "description": "", "created_at": "now"}
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(hub.publish_event, "tasks", other)
    client.portal.call(hub.publish_event, "tasks", other)  # twice: listed once
    client.portal.call(hub.publish_event, "tasks", {"not": "a task"})  # ignored
    assert client.get("/tasks").json() == [other]


def test_the_store_keeps_only_the_latest_tasks(backend: Flaky) -> None:
    with TestClient(create_app(hub=Hub(backend), settings=DemoSettings(task_limit=2))) as client:
        for title in "abc":
            client.post("/tasks", json={"title": title})
        assert [t["title"] for t in client.get("/tasks").json()] == ["b", "c"]


def test_an_outage_answers_503_and_unavailable_frames(client: TestClient, backend: Flaky) -> None:
    with client.websocket_connect("/ws/topics") as ws:
        ws.send_json({"type": "subscribe", "topic": "t"})
        assert ws.receive_json()["type"] == "subscribed"
        backend.down = True
        ws.send_json({"type": "publish", "topic": "t", "data": 1, "ref": "p1"})
        assert ws.receive_json() == {
            "type": "error",
            "code": "unavailable",
            "detail": "redis: connection refused",
            "ref": "p1",
        }
        failed = client.post("/tasks", json={"title": "t"})
        assert failed.status_code == 503
        assert failed.json()["task"]["title"] == "t"
        health = client.get("/health")
        assert health.status_code == 503
        assert health.json()["backend"]["state"] == "down"
        assert "rtkit_backend_up 0" in client.get("/metrics").text
        # A chat join needs the backend: the socket is turned away with "try again later".
        with client.websocket_connect("/ws/chat/r") as chat, pytest.raises(WebSocketDisconnect) as closed:
            chat.receive_json()
        assert (closed.value.code, closed.value.reason) == (1013, "backend unavailable")
        # A topic route subscribing at connect does the same, before accept when it can.
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect("/ws/secure/topics/x"),
        ):
            pass
        assert refused.value.status_code == 403  # authentication comes first
        backend.down = False
        ws.send_json({"type": "publish", "topic": "t", "data": 2})
        assert ws.receive_json() == {"type": "event", "topic": "t", "data": 2}
    assert "rtkit_backend_up 1" in client.get("/metrics").text


def test_a_hub_and_a_redis_url_are_not_both_accepted() -> None:
    with pytest.raises(TypeError, match="not both"):
        create_app(hub=Hub(), settings=DemoSettings(redis_url="redis://127.0.0.1:6379/0"))


def test_workers_read_their_settings_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = DemoSettings(limits=Limits(max_topics=1), task_limit=5)
    monkeypatch.setenv(SETTINGS_ENV, msgspec.json.encode(settings).decode())
    with TestClient(app_from_environment()) as client, client.websocket_connect("/ws/topics") as ws:
        ws.send_json({"type": "subscribe", "topic": "a"})
        ws.receive_json()
        ws.send_json({"type": "subscribe", "topic": "b"})
        assert ws.receive_json()["code"] == "limit_exceeded"
    monkeypatch.delenv(SETTINGS_ENV)
    # Without settings, the defaults (the app comes wrapped, to report a failed start in one line).
    with TestClient(app_from_environment()) as client, client.websocket_connect("/ws/topics") as ws:
        for topic in ("a", "b"):
            ws.send_json({"type": "subscribe", "topic": topic})
            assert ws.receive_json() == {"type": "subscribed", "topic": topic}


def test_several_workers_need_redis(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--workers", "2"])
    assert exited.value.code == 2
    assert "--workers above 1 needs --redis-url" in capsys.readouterr().err


def test_ids_of_tasks_created_in_one_burst_never_collide() -> None:
    store = TaskStore(limit=50_000)
    created = [store.create(NewTask(title=f"t{n}")) for n in range(20_000)]  # many per millisecond
    ids = [task.id for task in created]
    assert ids == sorted(set(ids))  # unique and increasing
    assert len(store.all()) == 20_000  # every task answered 201 is listed


def test_clients_cannot_publish_tasks_only_the_app_announces_them(client: TestClient) -> None:
    real = client.post("/tasks", json={"title": "real"}).json()
    forged = {"id": 1, "title": "forged", "description": "", "created_at": "then"}
    with client.websocket_connect("/ws/topics") as ws:
        ws.send_json({"type": "publish", "topic": "tasks", "data": forged, "ref": 1})
        assert ws.receive_json()["code"] == "forbidden"
    with client.websocket_connect("/ws/topics/tasks") as ws:
        ws.send_json({"type": "publish", "topic": "tasks", "data": forged})
        assert ws.receive_json()["code"] == "forbidden"
    # Whatever reaches the topic is held to the bounds of POST /tasks bodies.
    hub: Hub = client.app.state.hub  # type: ignore[attr-defined]
    assert client.portal is not None
    client.portal.call(hub.publish_event, "tasks", {**forged, "title": "x" * 50_000})
    assert client.get("/tasks").json() == [real]


def test_a_task_limit_below_one_is_refused(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(msgspec.ValidationError, match=">= 1"):
        msgspec.json.decode(b'{"task_limit": 0}', type=DemoSettings)
    with pytest.raises(ConfigurationError, match="limit must be 1 or more"):
        TaskStore(limit=-1)
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--task-limit", "0"])
    assert exited.value.code == 2
    assert "argument --task-limit: must be 1 or more, not 0" in capsys.readouterr().err


@pytest.mark.parametrize("secret", ["", "too short"])
def test_an_empty_or_short_jwt_secret_is_refused_not_replaced(
    secret: str, capsys: pytest.CaptureFixture[str]
) -> None:
    # Only an absent secret means the demo's public one.
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        create_app(settings=DemoSettings(jwt_secret=secret))
    with pytest.raises(SystemExit) as exited:
        main(["serve", "--jwt-secret", secret])
    assert exited.value.code == 2
    assert "--jwt-secret (or RTKIT_JWT_SECRET)" in capsys.readouterr().err


@pytest.mark.parametrize(
    "content_type",
    [None, "text/plain", "application/x-www-form-urlencoded", "multipart/form-data; boundary=x"],
)
def test_a_task_body_that_is_not_json_is_refused_415(client: TestClient, content_type: str | None) -> None:
    # The types a cross-site page may send without a CORS preflight: such a page must not be
    # able to create tasks on a demo running on its visitor's machine.
    headers = {"origin": "https://elsewhere.example"}
    if content_type is not None:
        headers["content-type"] = content_type
    refused = client.post("/tasks", content=b'{"title": "from elsewhere"}', headers=headers)
    assert refused.status_code == 415
    assert refused.json() == {"detail": "the body must be application/json"}
    assert client.get("/tasks").json() == []
    charset = client.post(
        "/tasks", content=b'{"title": "t"}', headers={"content-type": "Application/JSON; charset=utf-8"}
    )
    assert charset.status_code == 201


class Rechunked:
    """Hands the app the request body in small messages, as a server does (the TestClient
    sends it whole), and counts the bytes the app took."""

    def __init__(self, app: ASGIApp, size: int = 1024) -> None:
        self.app = app
        self.size = size
        self.taken = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        pending: list[bytes] = []
        done = False

        async def rechunked() -> Message:
            nonlocal done
            while not pending and not done:
                message = await receive()
                if message["type"] != "http.request":
                    return message
                body = message.get("body", b"")
                pending.extend(body[at : at + self.size] for at in range(0, len(body), self.size))
                done = not message.get("more_body", False)
            chunk = pending.pop(0) if pending else b""
            self.taken += len(chunk)
            return {"type": "http.request", "body": chunk, "more_body": bool(pending) or not done}

        await self.app(scope, rechunked, send)


@pytest.mark.parametrize("declared", [True, False], ids=["content-length", "chunked"])
def test_a_task_body_over_the_cap_is_refused_413_without_reading_the_rest(
    backend: Flaky, declared: bool
) -> None:
    app = Rechunked(create_app(hub=Hub(backend)))
    too_big = b" " * (4 * MAX_BODY_BYTES) + b'{"title": "t"}'
    with TestClient(app) as client:
        refused = client.post(
            "/tasks",
            # bytes come with a Content-Length; a generator is sent chunked, without one.
            content=too_big if declared else iter([too_big]),
            headers={"content-type": "application/json"},
        )
        assert refused.status_code == 413
        assert refused.json() == {"detail": f"the body must be {MAX_BODY_BYTES} bytes or fewer"}
        # A declared length is refused unread; an undeclared one once the cap is passed.
        if declared:
            assert app.taken == 0
        else:
            assert MAX_BODY_BYTES < app.taken <= MAX_BODY_BYTES + app.size
        assert client.get("/tasks").json() == []
        # The largest body within the fields' limits is never refused for its size: every
        # character an astral one, each written as two \u escapes (json.dumps's default).
        largest = {"title": "\U0001f600" * TITLE_MAX, "description": "\U0001f600" * DESCRIPTION_MAX}
        body = json.dumps(largest, indent=1).encode()
        assert len(body) <= MAX_BODY_BYTES
        accepted = client.post("/tasks", content=body, headers={"content-type": "application/json"})
        assert accepted.status_code == 201
