"""Every Python snippet of the README runs alone, in a fresh namespace, and does what the README
says: the ones that build an app are served on a real uvicorn and driven with a real client;
the ones that are tests are run.

Each snippet is recognised by a line of its own (``DRIVERS``); a snippet that no driver claims
and that defines no test fails here, so a new snippet cannot go unchecked.
"""

from __future__ import annotations

import json
import re
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.sync.client import ClientConnection, connect

from rtkit.testing import LiveServer
from tests.live import TIMEOUT
from tests.redis_support import require_redis

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)

Namespace = dict[str, Any]


def snippets() -> list[str]:
    return SNIPPET.findall(README.read_text(encoding="utf-8"))


def run_alone(code: str, number: int) -> Namespace:
    namespace: Namespace = {"__name__": f"readme_snippet_{number}"}
    exec(compile(code, f"README.md snippet {number}", "exec"), namespace)
    return namespace


def recv(ws: ClientConnection) -> Any:
    return json.loads(ws.recv(timeout=TIMEOUT))


def send(ws: ClientConnection, value: object) -> None:
    ws.send(json.dumps(value))


def open_ws(server: LiveServer, path: str, headers: dict[str, str] | None = None) -> ClientConnection:
    return connect(server.ws_url(path), open_timeout=TIMEOUT, additional_headers=headers)


# -- what each snippet serves -------------------------------------------------------------------


def drive_quick_start(ns: Namespace) -> None:
    with LiveServer(ns["app"]) as server:
        with open_ws(server, "/ws/chat/lobby?name=ann") as ann:
            assert recv(ann) == {"type": "welcome", "room": "lobby", "user": "ann", "members": ["ann"]}
            send(ann, {"type": "say", "text": "hi"})
            said = recv(ann)
            assert (said["type"], said["user"], said["text"]) == ("message", "ann", "hi")
        with open_ws(server, "/ws/topics/news") as reader, open_ws(server, "/ws/topics") as writer:
            send(writer, {"type": "subscribe", "topic": "news", "ref": 1})
            assert recv(writer) == {"type": "subscribed", "topic": "news", "ref": 1}
            send(writer, {"type": "publish", "topic": "news", "data": {"n": 1}})
            assert recv(reader) == {"type": "event", "topic": "news", "data": {"n": 1}}


def drive_calculator(ns: Namespace) -> None:
    with LiveServer(ns["app"]) as server, open_ws(server, "/calc") as ws:
        send(ws, {"type": "add", "a": 1, "b": 2, "ref": "r"})
        assert recv(ws) == {"type": "sum", "ref": "r", "value": 3}


def drive_team_chat(ns: Namespace) -> None:
    with (
        LiveServer(ns["app"]) as server,
        open_ws(server, "/team/x", {"x-user": "ann"}) as ann,
    ):
        assert recv(ann)["user"] == "ann"
        with open_ws(server, "/team/x") as guest:
            guest_user = recv(guest)["user"]
            assert guest_user.startswith("guest-")
            assert recv(ann) == {"type": "joined", "room": "x", "user": guest_user}
            send(guest, {"type": "typing"})
            assert recv(ann) == {"type": "typing", "room": "x", "user": guest_user}
            send(ann, {"type": "say", "text": "hello", "ref": 1})
            # echo_to_sender is off: ann gets `said`, not her own message; the guest gets it.
            assert recv(ann) == {"type": "said", "room": "x", "ref": 1}
            assert recv(guest)["text"] == "hello"


def drive_fastapi(ns: Namespace) -> None:
    with LiveServer(ns["app"]) as server, open_ws(server, "/ws/topics/news") as ws:
        request = urllib.request.Request(server.http_url("/announce?text=hi"), method="POST")
        with urllib.request.urlopen(request, timeout=TIMEOUT) as response:
            assert json.loads(response.read()) == {"status": "sent"}
        assert recv(ws) == {"type": "event", "topic": "news", "data": {"text": "hi"}}


def drive_authentication(ns: Namespace) -> None:
    bearer = {"authorization": f"Bearer {ns['token']}"}
    with LiveServer(ns["app"]) as server, open_ws(server, "/own/ann", bearer) as ws:
        send(ws, {"type": "publish", "topic": "ann", "data": 1, "ref": 1})
        assert recv(ws) == {"type": "event", "topic": "ann", "data": 1}
        assert recv(ws) == {"type": "published", "topic": "ann", "ref": 1}
        send(ws, {"type": "publish", "topic": "bob", "data": 1, "ref": 2})
        refused = recv(ws)
        assert (refused["type"], refused["code"], refused["ref"]) == ("error", "forbidden", 2)


def drive_redis(ns: Namespace) -> None:
    with LiveServer(ns["app"]) as server, open_ws(server, "/ws/chat/readme-redis?name=ann") as ws:
        assert recv(ws)["type"] == "welcome"


def drive_lifespan(ns: Namespace) -> None:
    with LiveServer(ns["app"]) as server, open_ws(server, "/ws/echo") as ws:
        ws.send("ping")
        assert ws.recv(timeout=TIMEOUT) == "ping"


DRIVERS: dict[str, Callable[[Namespace], None]] = {
    'router.add("/topics", TopicEndpoint)': drive_quick_start,
    "class Calculator(RealtimeEndpoint):": drive_calculator,
    "class TeamChat(ChatEndpoint):": drive_team_chat,
    "app = FastAPI()": drive_fastapi,
    "class OwnTopics(TopicEndpoint):": drive_authentication,
    "RedisBackend(": drive_redis,
    "async with router:": drive_lifespan,
}
"""A line only that snippet has, and what to do with what it built."""


def test_the_readme_has_a_complete_app_in_under_20_lines() -> None:
    first = snippets()[0]
    assert len(first.strip().splitlines()) < 20
    assert "app = " in first


def claimed_by(code: str) -> list[str]:
    return [marker for marker in DRIVERS if marker in code]


def test_each_driver_claims_exactly_one_snippet() -> None:
    found = snippets()
    for marker in DRIVERS:
        assert sum(marker in code for code in found) == 1, marker


@pytest.mark.parametrize("number", range(1, len(snippets()) + 1))
def test_each_readme_snippet_runs_alone_and_does_what_it_says(number: int) -> None:
    code = snippets()[number - 1]
    markers = claimed_by(code)
    if any(DRIVERS[marker] is drive_redis for marker in markers):
        require_redis()
    namespace = run_alone(code, number)
    tests = [value for name, value in namespace.items() if name.startswith("test_") and callable(value)]
    assert markers or tests, f"README snippet {number} is neither driven nor a test:\n{code}"
    for marker in markers:
        DRIVERS[marker](namespace)
    for test in tests:
        test()
