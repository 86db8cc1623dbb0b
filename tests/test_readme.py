"""Every Python snippet of the README runs, in order, in one namespace (as a reader would)."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

README = Path(__file__).resolve().parent.parent / "README.md"
SNIPPET = re.compile(r"^```python\n(.*?)^```", re.DOTALL | re.MULTILINE)


def snippets() -> list[str]:
    return SNIPPET.findall(README.read_text(encoding="utf-8"))


def test_the_readme_has_a_complete_app_in_under_20_lines() -> None:
    first = snippets()[0]
    assert len(first.strip().splitlines()) < 20
    assert "app = " in first


def test_every_readme_snippet_runs() -> None:
    found = snippets()
    assert len(found) >= 8
    namespace: dict[str, Any] = {"__name__": "readme"}
    for number, code in enumerate(found, start=1):
        exec(compile(code, f"README.md snippet {number}", "exec"), namespace)
    # The snippets built working apps: drive the FastAPI one and the custom endpoint too.
    from starlette.testclient import TestClient

    with TestClient(namespace["api"]) as client, client.websocket_connect("/ws/topics/news") as ws:
        assert client.post("/announce", params={"text": "hi"}).status_code == 200
        assert ws.receive_json() == {"type": "event", "topic": "news", "data": {"text": "hi"}}
    with TestClient(namespace["app"]) as client:
        with client.websocket_connect("/ws/calc") as ws:
            ws.send_json({"type": "add", "a": 1, "b": 2, "ref": "r"})
            assert ws.receive_json() == {"type": "sum", "ref": "r", "value": 3}
        with (
            client.websocket_connect("/ws/team/x", headers={"x-user": "ann"}) as ann,
            client.websocket_connect("/ws/team/x") as guest,
        ):
            assert ann.receive_json()["user"] == "ann"
            guest_user = guest.receive_json()["user"]
            assert ann.receive_json() == {"type": "joined", "room": "x", "user": guest_user}
            guest.send_json({"type": "typing"})
            assert ann.receive_json() == {"type": "typing", "room": "x", "user": guest_user}
