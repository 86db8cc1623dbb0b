"""The guards' parts without a network: auth, limits, the inbox, metrics, refusals."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import anyio
import jwt
import pytest
from starlette.applications import Starlette
from starlette.requests import HTTPConnection
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocketDisconnect

from rtkit import (
    Action,
    Authenticator,
    ChatEndpoint,
    ConfigurationError,
    EchoEndpoint,
    JWTAuthenticator,
    Limits,
    Metrics,
    Principal,
    RealtimeRouter,
)
from rtkit._types import Receive, Scope, Send
from rtkit.auth import bearer_token, create_token
from rtkit.cli import build_parser, limits_from, main
from rtkit.errors import HandshakeRefusedError
from rtkit.limits import TokenBucket, topic_name_error
from rtkit.session.inbox import Inbox

SECRET = "unit-test-secret-with-32-bytes-or-more"


def connection(
    headers: dict[str, str] | None = None, query: str = "", subprotocols: list[str] | None = None
) -> HTTPConnection:
    scope: dict[str, Any] = {
        "type": "websocket",
        "headers": [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()],
        "query_string": query.encode(),
        "subprotocols": subprotocols or [],
        "path": "/",
    }
    return HTTPConnection(scope)


def test_bearer_token_is_found_where_clients_can_put_it() -> None:
    assert bearer_token(connection({"Authorization": "Bearer abc"})) == "abc"
    assert bearer_token(connection({"Authorization": "bearer  abc "})) == "abc"
    assert bearer_token(connection(subprotocols=["rtkit.bearer", "tok"])) == "tok"
    assert bearer_token(connection(subprotocols=["rtkit.bearer"])) is None
    assert bearer_token(connection({"Cookie": "token=c"})) == "c"
    assert bearer_token(connection(query="token=q")) == "q"
    assert bearer_token(connection({"Authorization": "Basic xyz"})) is None
    assert bearer_token(connection()) is None


@pytest.mark.anyio
async def test_jwt_authenticator_checks_signature_expiry_and_claims() -> None:
    auth = JWTAuthenticator(SECRET, audience="rt")
    good = create_token(SECRET, "ann", aud="rt", role="admin")
    principal = await auth.authenticate(connection({"Authorization": f"Bearer {good}"}))
    assert principal is not None
    assert principal.id == "ann"
    assert principal.claims["role"] == "admin"
    # Each refusal says why (the client reads it in the HTTP denial), never what the token was.
    refused = [
        (create_token(SECRET, "ann", ttl=-5, aud="rt"), "token expired"),
        (create_token(SECRET + "x", "ann", aud="rt"), "invalid token"),  # another secret
        (create_token(SECRET, "ann", aud="other"), "invalid token"),  # another audience
        (jwt.encode({"sub": "ann", "aud": "rt"}, SECRET, algorithm="HS256"), "invalid token"),  # no exp
        (jwt.encode({"exp": int(time.time()) + 60, "aud": "rt"}, SECRET, algorithm="HS256"), "invalid token"),
        ("not-a-token", "invalid token"),
    ]
    for token, reason in refused:
        with pytest.raises(HandshakeRefusedError) as refusal:
            await auth.authenticate(connection(query=f"token={token}"))
        assert (refusal.value.reason, refusal.value.status) == (reason, 403)
    with pytest.raises(HandshakeRefusedError, match=r"^missing token$"):
        await auth.authenticate(connection())


@pytest.mark.anyio
async def test_a_cookie_token_is_taken_from_the_servers_own_pages_only() -> None:
    token = create_token(SECRET, "ann")
    cookie = {"Cookie": f"token={token}", "Host": "chat.example:8000"}
    auth = JWTAuthenticator(SECRET)
    # Another site's page: the browser added the cookie by itself. Refused.
    with pytest.raises(HandshakeRefusedError, match="another site"):
        await auth.authenticate(connection({**cookie, "Origin": "https://evil.example"}))
    # The server's own page, or no page at all (a program): taken.
    assert await auth.authenticate(connection({**cookie, "Origin": "http://chat.example:8000"}))
    assert await auth.authenticate(connection(cookie))
    # A token the page's code sent itself is taken from any origin.
    header = {"Authorization": f"Bearer {token}", "Origin": "https://evil.example"}
    assert await auth.authenticate(connection(header))
    # Origins named by the app.
    listed = JWTAuthenticator(SECRET, allowed_origins=["https://app.example"])
    assert await listed.authenticate(connection({**cookie, "Origin": "https://app.example"}))
    with pytest.raises(HandshakeRefusedError, match="another site"):
        await listed.authenticate(connection({**cookie, "Origin": "http://chat.example:8000"}))


def test_short_secrets_are_refused() -> None:
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        JWTAuthenticator("short")
    with pytest.raises(ConfigurationError, match="at least 32 bytes"):
        create_token("short", "ann")


def test_topic_name_rule() -> None:
    for good in ("a", "news", "user/ann", "a.b:c@d-e_f", "x" * 255):
        assert topic_name_error(good) is None
    for bad in ("", "x" * 256, "a b", "a*", "a?", "[a]", "é", "a\nb"):
        problem = topic_name_error(bad)
        assert problem is not None
        assert "A-Z a-z 0-9" in problem


def test_limits_refuse_nonsense() -> None:
    with pytest.raises(ConfigurationError, match="burst, rate must be positive"):
        Limits(rate=0, burst=0)
    with pytest.raises(ConfigurationError, match="max_topics"):
        Limits(max_topics=-1)
    with pytest.raises(ConfigurationError, match="rate, idle_timeout must be positive"):
        Limits(rate=float("nan"), idle_timeout=float("nan"))  # not a way to turn them off
    assert Limits(rate=None, idle_timeout=None).rate is None


def test_token_bucket_allows_the_burst_then_the_rate(monkeypatch: pytest.MonkeyPatch) -> None:
    now = [100.0]
    monkeypatch.setattr(time, "monotonic", lambda: now[0])
    bucket = TokenBucket(rate=2.0, burst=3)
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]
    now[0] += 0.5  # one token back
    assert [bucket.take(), bucket.take()] == [True, False]
    now[0] += 100  # never more than the burst saved up
    assert [bucket.take() for _ in range(4)] == [True, True, True, False]


@pytest.mark.anyio
async def test_the_inbox_is_bounded_and_ordered() -> None:
    inbox = Inbox(2)
    inbox.put({"n": 1})
    inbox.put({"n": 2})
    with anyio.move_on_after(0.05) as waited:
        await inbox.wait_for_room()
    assert waited.cancelled_caught  # full: the pump would wait here
    got: list[Any] = []

    async def consumer() -> None:
        for _ in range(3):
            got.append((await inbox.get())["n"])

    async with anyio.create_task_group() as tg:
        tg.start_soon(consumer)
        with anyio.fail_after(5):
            await inbox.wait_for_room()
            inbox.put({"n": 3})
    assert got == [1, 2, 3]
    assert len(inbox) == 0


def test_metrics_render_as_prometheus_text() -> None:
    metrics = Metrics()
    metrics.messages_in = 3
    metrics.errors["forbidden"] += 2
    metrics.closes[1009] += 1
    metrics.refused["auth"] += 4
    text = metrics.render_prometheus()
    assert "# TYPE rtkit_messages_in_total counter\nrtkit_messages_in_total 3" in text
    assert 'rtkit_error_frames_total{code="forbidden"} 2' in text
    assert 'rtkit_closes_total{code="1009"} 1' in text
    assert 'rtkit_connections_refused_total{reason="auth"} 4' in text
    assert "rtkit_connections_open 0" in text
    assert metrics.as_dict()["errors"] == {"forbidden": 2}


def test_metric_label_values_are_escaped() -> None:
    # An application's own error code can hold anything; one odd code must not make the whole
    # exposition unreadable.
    metrics = Metrics()
    metrics.errors['upstream:say "hi"\nnow\\'] += 1
    text = metrics.render_prometheus()
    assert 'rtkit_error_frames_total{code="upstream:say \\"hi\\"\\nnow\\\\"} 1\n' in text
    # Every sample line is one line of the form name{labels} value.
    samples = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert all(line.rsplit(" ", 1)[1].isdigit() for line in samples)


# -- refusals through TestClient -------------------------------------------------------------


class Exploding(Authenticator):
    async def authenticate(self, connection: HTTPConnection) -> Principal | None:
        raise RuntimeError("identity provider down")


class Members(ChatEndpoint):
    """Only rooms named after the user may be joined."""

    async def on_authorize(self, action: Action, name: str) -> bool:
        return name == self.user


def build_app() -> Starlette:
    router = RealtimeRouter()
    router.add("/auth", EchoEndpoint, authenticator=JWTAuthenticator(SECRET))
    router.add("/exploding", EchoEndpoint, authenticator=Exploding())
    router.add("/one", EchoEndpoint, limits=Limits(max_connections=1))
    router.add("/members/{room}", Members)
    router.add("/chat/{room}", ChatEndpoint)
    return Starlette(routes=router.routes, lifespan=router.lifespan)


@pytest.fixture
def client() -> Iterator[TestClient]:
    with TestClient(build_app()) as test_client:
        yield test_client


def test_refusals_are_http_responses_where_the_server_allows(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/auth"):
        pass
    assert (refused.value.status_code, refused.value.text) == (403, "missing token")
    token = create_token(SECRET, "ann")
    with client.websocket_connect("/auth", headers={"Authorization": f"Bearer {token}"}) as ws:
        ws.send_text("hi")
        assert ws.receive_text() == "hi"
    with client.websocket_connect("/one"):
        with pytest.raises(WebSocketDenialResponse) as full, client.websocket_connect("/one"):
            pass
        assert full.value.status_code == 503
        assert full.value.headers["retry-after"] == "5"


def test_a_failing_authenticator_refuses_with_500_and_logs(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/exploding"):
        pass
    assert refused.value.status_code == 500
    assert any("authenticator failed" in r.getMessage() for r in caplog.records)


def strip_extensions(app: Starlette) -> Any:
    """The app behind a server that cannot send HTTP denial responses."""

    async def stripped(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "websocket":
            scope = {**scope, "extensions": {}}
        await app(scope, receive, send)

    return stripped


def test_without_denial_responses_refusals_are_close_codes() -> None:
    with TestClient(strip_extensions(build_app())) as client:
        with pytest.raises(WebSocketDisconnect) as refused, client.websocket_connect("/auth"):
            pass
        assert (refused.value.code, refused.value.reason) == (1008, "missing token")
        with client.websocket_connect("/one"):
            with pytest.raises(WebSocketDisconnect) as full, client.websocket_connect("/one"):
                pass
            assert full.value.code == 1013


def test_a_refused_join_is_an_error_frame_and_the_socket_stays(client: TestClient) -> None:
    with client.websocket_connect("/members/bob?name=ann") as ann:
        assert ann.receive_json() == {
            "type": "error",
            "code": "forbidden",
            "detail": "not allowed to join 'bob'",
        }
        ann.send_json({"type": "say", "text": "let me in", "ref": 1})
        assert ann.receive_json() == {
            "type": "error",
            "code": "forbidden",
            "detail": "not a member of 'bob'",
            "ref": 1,
        }
    with client.websocket_connect("/members/ann?name=ann") as ann:
        assert ann.receive_json()["type"] == "welcome"


def test_an_invalid_room_name_is_refused(client: TestClient) -> None:
    with pytest.raises(WebSocketDenialResponse) as refused, client.websocket_connect("/chat/a*b"):
        pass
    assert refused.value.status_code == 403
    assert refused.value.text.startswith("room invalid name 'a*b': use 1 to 255 characters")


# -- the command line ----------------------------------------------------------------------


def test_serve_flags_become_limits() -> None:
    args = build_parser().parse_args(
        [
            *["serve", "--rate", "0", "--max-connections", "0", "--idle-timeout", "30", "--heartbeat", "10"],
            *[
                "--max-message-bytes",
                "100",
                "--overflow",
                "drop_oldest",
                "--max-connections-per-principal",
                "3",
            ],
        ]
    )
    limits = limits_from(args)
    assert limits.rate is None
    assert limits.max_connections is None
    assert limits.idle_timeout == 30
    assert limits.heartbeat_interval == 10
    assert limits.max_message_bytes == 100
    assert limits.overflow == "drop_oldest"
    assert limits.max_connections_per_principal == 3
    assert limits_from(build_parser().parse_args(["serve"])) == Limits()


def test_rtkit_token_prints_a_token_the_demo_accepts(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["token", "--secret", SECRET, "--sub", "ann", "--ttl", "60"]) == 0
    token = capsys.readouterr().out.strip()
    claims = jwt.decode(token, SECRET, algorithms=["HS256"])
    assert claims["sub"] == "ann"
    assert 0 < claims["exp"] - time.time() <= 60
    assert main(["token", "--sub", "bob"]) == 0  # the demo's own secret by default
    from rtkit.demo.app import DEMO_SECRET

    assert jwt.decode(capsys.readouterr().out.strip(), DEMO_SECRET, algorithms=["HS256"])["sub"] == "bob"
