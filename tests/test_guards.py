"""The guards over real sockets, under uvicorn's websockets-sansio, wsproto and rtkit's fast protocol.

Each test asserts the exact close code or error frame the guard answers with, AND that a
witness client on the same server kept receiving every event meanwhile.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import AsyncIterator, Iterator
from typing import Any

import anyio
import msgspec
import pytest
from starlette.applications import Starlette
from starlette.routing import Mount
from starlette.websockets import WebSocket
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Subprotocol

from rtkit import EchoEndpoint, Hub, Limits, RealtimeEndpoint, RealtimeRouter, TopicEndpoint
from rtkit.auth import JWTAuthenticator, create_token
from rtkit.demo.secure import SecureTopicEndpoint
from rtkit.messages import Envelope
from rtkit.testing import LiveServer
from tests.live import FAST_PROTOCOL, RawClient, frames_until_closed, recv_json, send_json

pytestmark = pytest.mark.anyio

SECRET = "guard-test-secret-of-at-least-32-bytes"
BASE = Limits(
    max_message_bytes=1024,
    rate=20.0,
    burst=5,
    max_rate_violations=5,
    max_invalid_frames=3,
    max_topics=3,
    max_connections=None,
    max_connections_per_principal=2,
    slow_close_timeout=0.5,
    stall_check_interval=0.2,
)
FAST = msgspec.structs.replace(BASE, rate=None)
BULK = msgspec.structs.replace(FAST, max_message_bytes=64 * 1024)


class Work(Envelope, tag="work"):
    seconds: float
    n: int


class Slow(RealtimeEndpoint):
    """A handler that blocks its connection's loop for a while (it awaits, as real work does)."""

    inbound = Work

    async def on_work(self, websocket: WebSocket, message: Work) -> None:
        await anyio.sleep(message.seconds)
        self.queue_message({"type": "done", "n": message.n})


hub = Hub()
capped_hub = Hub()


def build_app() -> Starlette:
    router = RealtimeRouter(hub=hub)
    router.add("/topics", TopicEndpoint, limits=BASE)
    router.add("/fast/topics", TopicEndpoint, limits=FAST)
    router.add("/fast/topics/{topic}", TopicEndpoint, limits=FAST)
    router.add("/bulk/topics", TopicEndpoint, limits=BULK)
    router.add("/bulk/topics/{topic}", TopicEndpoint, limits=BULK)
    router.add("/idle", TopicEndpoint, limits=msgspec.structs.replace(FAST, idle_timeout=0.5))
    router.add("/heartbeat", TopicEndpoint, limits=msgspec.structs.replace(FAST, heartbeat_interval=0.1))
    router.add("/slow", Slow, limits=FAST)
    router.add("/secure/{topic}", SecureTopicEndpoint, limits=FAST, authenticator=JWTAuthenticator(SECRET))
    capped = RealtimeRouter(hub=capped_hub)
    capped.add("/echo", EchoEndpoint, limits=msgspec.structs.replace(FAST, max_connections=2))

    @contextlib.asynccontextmanager
    async def both(app: Starlette) -> AsyncIterator[None]:
        async with router, capped:
            yield

    return Starlette(routes=[Mount("/ws", app=router), Mount("/capped", app=capped)], lifespan=both)


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(scope="module", params=["websockets-sansio", "wsproto", FAST_PROTOCOL])
def server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    # Quick keepalive pings: a loop blocked by a slow handler would fail them within 1.5 s.
    with LiveServer(build_app(), ws=request.param, ws_ping_interval=0.5, ws_ping_timeout=1.0) as live:
        yield live


@pytest.fixture(scope="module", params=["websockets-sansio", "wsproto", FAST_PROTOCOL])
def quiet_server(request: pytest.FixtureRequest) -> Iterator[LiveServer]:
    # No keepalive pings: a client that never reads never answers one either, and the server
    # would drop it for that (after 1.5 s with the fixture above) before its outbox overflowed.
    with LiveServer(build_app(), ws=request.param, ws_ping_interval=None) as live:
        yield live


class Witness:
    """A client subscribed to a topic of its own, and a publisher feeding it."""

    def __init__(self, server: LiveServer) -> None:
        self.server = server
        self.sent = 0

    async def __aenter__(self) -> Witness:
        self.watcher = await connect(self.server.ws_url("/ws/fast/topics/witness"))
        self.publisher = await connect(self.server.ws_url("/ws/fast/topics"))
        await self.feed(5)
        return self

    async def feed(self, count: int) -> None:
        for _ in range(count):
            await send_json(self.publisher, {"type": "publish", "topic": "witness", "data": self.sent})
            self.sent += 1

    async def __aexit__(self, *exc: object) -> None:
        try:
            if exc[0] is None:
                await self.feed(5)
                got = [(await recv_json(self.watcher))["data"] for _ in range(self.sent)]
                assert got == list(range(self.sent)), "the witness missed events"
        finally:
            await self.watcher.close()
            await self.publisher.close()


async def closed_with(ws: ClientConnection) -> tuple[int | None, str | None]:
    """Read until the server closes; the close code and reason it sent."""
    _, code, reason = await frames_until_closed(ws)
    return code, reason


# -- authentication and authorization ------------------------------------------------------


async def test_no_or_bad_token_is_refused_with_403(server: LiveServer) -> None:
    expired = create_token(SECRET, "ann", ttl=-10)
    forged = create_token("another-secret-of-at-least-32-bytes", "ann")
    async with Witness(server):
        for headers in ({}, {"Authorization": f"Bearer {expired}"}, {"Authorization": f"Bearer {forged}"}):
            with pytest.raises(InvalidStatus) as refused:
                async with connect(server.ws_url("/ws/secure/news"), additional_headers=headers):
                    pass
            assert refused.value.response.status_code == 403
    assert hub.metrics.refused["auth"] >= 3


async def test_a_token_is_taken_from_header_subprotocol_cookie_or_query(server: LiveServer) -> None:
    token = create_token(SECRET, "ann")
    ways: list[dict[str, Any]] = [
        {"uri": "/ws/secure/a", "additional_headers": {"Authorization": f"Bearer {token}"}},
        {"uri": "/ws/secure/a", "subprotocols": ["rtkit.bearer", token]},
        {"uri": "/ws/secure/a", "additional_headers": {"Cookie": f"token={token}"}},
        {"uri": f"/ws/secure/a?token={token}"},
    ]
    for way in ways:
        uri = server.ws_url(way.pop("uri"))
        async with connect(uri, **way) as ws:
            if "subprotocols" in way:  # the marker comes back, never the token
                assert ws.subprotocol == "rtkit.bearer"
            await send_json(ws, {"type": "publish", "topic": "ann", "data": 1, "ref": 1})
            assert await recv_json(ws) == {"type": "published", "topic": "ann", "ref": 1}


async def test_not_allowed_to_publish_is_an_error_frame_and_the_socket_stays(server: LiveServer) -> None:
    token = create_token(SECRET, "bob")
    async with (
        Witness(server),
        connect(server.ws_url(f"/ws/secure/ann?token={token}")) as bob,
        connect(server.ws_url(f"/ws/secure/ann?token={create_token(SECRET, 'ann')}")) as ann,
    ):
        await send_json(bob, {"type": "publish", "topic": "ann", "data": "spoof", "ref": "x"})
        assert await recv_json(bob) == {
            "type": "error",
            "code": "forbidden",
            "detail": "not allowed to publish on 'ann'",
            "ref": "x",
        }
        await send_json(ann, {"type": "publish", "topic": "ann/status", "data": "mine"})
        await send_json(ann, {"type": "publish", "topic": "ann", "data": "mine"})
        # bob is subscribed to ann (from the path): he gets ann's event, and never his own spoof.
        assert await recv_json(bob) == {"type": "event", "topic": "ann", "data": "mine"}


async def test_the_open_route_on_the_same_hub_cannot_reach_the_secured_topics(server: LiveServer) -> None:
    # The secured class has a namespace of its own: a client of the open route, with no token,
    # publishing on the same topic name, reaches the open route's subscribers only.
    token = create_token(SECRET, "bob")
    async with (
        Witness(server),
        connect(server.ws_url(f"/ws/secure/ann?token={token}")) as bob,
        connect(server.ws_url("/ws/fast/topics/ann")) as open_subscriber,
        connect(server.ws_url("/ws/fast/topics")) as anonymous,
    ):
        await send_json(anonymous, {"type": "publish", "topic": "ann", "data": "forged", "ref": 1})
        assert await recv_json(anonymous) == {"type": "published", "topic": "ann", "ref": 1}
        assert await recv_json(open_subscriber) == {"type": "event", "topic": "ann", "data": "forged"}
        ann = create_token(SECRET, "ann")
        async with connect(server.ws_url(f"/ws/secure/ann?token={ann}")) as owner:
            await send_json(owner, {"type": "publish", "topic": "ann", "data": "mine"})
            # Had the forged event reached bob, it would have come first.
            assert await recv_json(bob) == {"type": "event", "topic": "ann", "data": "mine"}


async def test_connections_per_principal_are_capped_with_503(server: LiveServer) -> None:
    token = create_token(SECRET, "cap")
    uri = server.ws_url(f"/ws/secure/x?token={token}")
    async with Witness(server), connect(uri), connect(uri):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(uri):
                pass
        assert refused.value.response.status_code == 503
        assert refused.value.response.headers["Retry-After"] == "5"
        async with connect(server.ws_url(f"/ws/secure/x?token={create_token(SECRET, 'other')}")):
            pass  # another principal still gets in
    async with connect(uri):
        pass  # the slots were released when the connections closed


async def test_global_connection_cap_answers_503(server: LiveServer) -> None:
    async with (
        Witness(server),
        connect(server.ws_url("/capped/echo")),
        connect(server.ws_url("/capped/echo")),
    ):
        with pytest.raises(InvalidStatus) as refused:
            async with connect(server.ws_url("/capped/echo")):
                pass
        assert refused.value.response.status_code == 503
    assert capped_hub.metrics.refused["capacity"] >= 1


# -- limits on frames -----------------------------------------------------------------------


async def test_an_oversized_frame_closes_1009(server: LiveServer) -> None:
    async with Witness(server), connect(server.ws_url("/ws/topics"), max_size=None) as ws:
        await ws.send("x" * 2000)
        assert (await closed_with(ws))[0] == 1009


async def test_an_oversized_binary_frame_from_a_raw_socket_closes_1009(server: LiveServer) -> None:
    async with Witness(server):
        raw = RawClient(server.host, server.port, "/ws/topics")
        try:
            assert raw.status == 101
            raw.send_frame(b"\x00" * 5000, opcode=0x2)
            opcode, payload = raw.recv_frame()
            assert opcode == 0x8
            assert int.from_bytes(payload[:2], "big") == 1009
        finally:
            raw.close()


async def test_over_the_rate_an_error_frame_then_sustained_abuse_closes_1008(server: LiveServer) -> None:
    async with Witness(server), connect(server.ws_url("/ws/topics")) as ws:
        for n in range(40):  # far faster than 20/s: the burst of 5 passes, then refusals
            await send_json(ws, {"type": "subscribe", "topic": f"t{n % 2}", "ref": n})
        frames, code, reason = await frames_until_closed(ws)
        assert (code, reason) == (1008, "rate limit exceeded")
        kinds = [f["type"] if f["type"] != "error" else f["code"] for f in frames]
        assert kinds[:5] == ["subscribed"] * 5
        assert kinds[5:] == ["rate_limited"] * 4  # the 5th refusal in a row closes instead
        assert [f.get("ref") for f in frames] == list(range(9))  # a refusal answers its request


async def test_the_rate_limit_holds_for_messagepack_frames_too(server: LiveServer) -> None:
    from websockets.exceptions import ConnectionClosed

    url = server.ws_url("/ws/topics")
    async with Witness(server), connect(url, subprotocols=[Subprotocol("rtkit.msgpack")]) as ws:
        assert ws.subprotocol == "rtkit.msgpack"
        for n in range(40):
            await ws.send(msgspec.msgpack.encode({"type": "subscribe", "topic": f"t{n % 2}", "ref": n}))
        kinds: list[str] = []
        refs: list[int | None] = []
        close: tuple[int, str] | None = None
        with anyio.fail_after(10):
            try:
                while True:
                    frame = msgspec.msgpack.decode(await ws.recv(decode=False))
                    kinds.append(frame["type"] if frame["type"] != "error" else frame["code"])
                    refs.append(frame.get("ref"))
            except ConnectionClosed as closed:
                close = (closed.rcvd.code, closed.rcvd.reason) if closed.rcvd else None
        assert close == (1008, "rate limit exceeded")
        assert kinds == ["subscribed"] * 5 + ["rate_limited"] * 4
        assert refs == list(range(9))


async def test_invalid_frames_in_a_row_close_1008_but_not_when_interleaved(server: LiveServer) -> None:
    async with Witness(server), connect(server.ws_url("/ws/fast/topics")) as ws:
        for _ in range(4):  # invalid, invalid, valid: the count starts again
            await ws.send("nope")
            await ws.send(b"\x00binary")
            await send_json(ws, {"type": "subscribe", "topic": "ok"})
            codes = [(await recv_json(ws)).get("code") for _ in range(3)]
            assert codes == ["invalid_message", "invalid_message", None]
        for _ in range(3):
            await ws.send("{")
        assert [(await recv_json(ws))["code"] for _ in range(2)] == ["invalid_message"] * 2
        assert await closed_with(ws) == (1008, "too many invalid frames")


async def test_topic_names_and_the_topic_limit(server: LiveServer) -> None:
    async with Witness(server), connect(server.ws_url("/ws/fast/topics")) as ws:
        for bad in ("", "a*", "x" * 256, "sp ace", "[x]"):
            await send_json(ws, {"type": "subscribe", "topic": bad, "ref": bad[:5]})
            error = await recv_json(ws)
            assert (error["code"], error["ref"]) == ("invalid_topic", bad[:5])
        await send_json(ws, {"type": "publish", "topic": "bad topic", "data": 1})
        assert (await recv_json(ws))["code"] == "invalid_topic"
        await send_json(ws, {"type": "unsubscribe", "topic": "a*b", "ref": 9})
        error = await recv_json(ws)
        assert (error["code"], error["ref"]) == ("invalid_topic", 9)
        for n in range(3):
            await send_json(ws, {"type": "subscribe", "topic": f"ok.{n}/a:b@c-d_e"})
            assert (await recv_json(ws))["type"] == "subscribed"
        await send_json(ws, {"type": "subscribe", "topic": "one-too-many"})
        assert await recv_json(ws) == {
            "type": "error",
            "code": "limit_exceeded",
            "detail": "at most 3 topics per connection",
        }
        await send_json(ws, {"type": "subscribe", "topic": "ok.0/a:b@c-d_e"})  # already held: fine
        assert (await recv_json(ws))["type"] == "subscribed"
        await send_json(ws, {"type": "unsubscribe", "topic": "ok.1/a:b@c-d_e"})
        await recv_json(ws)
        await send_json(ws, {"type": "subscribe", "topic": "now-fits"})
        assert (await recv_json(ws))["type"] == "subscribed"


# -- time ------------------------------------------------------------------------------------


async def test_an_idle_connection_is_closed_1001_and_heartbeats_keep_it(server: LiveServer) -> None:
    async with (
        Witness(server),
        connect(server.ws_url("/ws/idle")) as quiet,
        connect(server.ws_url("/ws/idle")) as chatty,
    ):

        async def keep_alive() -> None:
            for _ in range(6):
                await send_json(chatty, {"type": "heartbeat"})
                await anyio.sleep(0.2)

        async with anyio.create_task_group() as tg:
            tg.start_soon(keep_alive)
            assert await closed_with(quiet) == (1001, "idle timeout")
        # The client's heartbeats reset its timer without any frame in answer.
        await send_json(chatty, {"type": "subscribe", "topic": "still-here"})
        assert (await recv_json(chatty))["type"] == "subscribed"


async def test_heartbeat_frames_arrive(server: LiveServer) -> None:
    async with connect(server.ws_url("/ws/heartbeat")) as ws:
        assert [await recv_json(ws) for _ in range(3)] == [{"type": "heartbeat"}] * 3


async def test_a_slow_handler_does_not_get_a_ping_answering_client_killed(server: LiveServer) -> None:
    # The server pings every 0.5 s and gives up 1 s later. The handler blocks its loop for
    # 3 s while a second message waits: unless rtkit keeps reading, the pong goes unread.
    async with Witness(server), connect(server.ws_url("/ws/slow")) as ws:
        await send_json(ws, {"type": "work", "seconds": 3.0, "n": 1})
        await send_json(ws, {"type": "work", "seconds": 0.0, "n": 2})
        await send_json(ws, {"type": "work", "seconds": 0.5, "n": 3})
        assert [await recv_json(ws) for _ in range(3)] == [{"type": "done", "n": n} for n in (1, 2, 3)]
        await send_json(ws, {"type": "work", "seconds": 0.0, "n": 4})
        assert await recv_json(ws) == {"type": "done", "n": 4}


# -- slow consumers and vanishing peers ------------------------------------------------------


def rss_bytes() -> int:
    with open("/proc/self/status", encoding="ascii") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")  # pragma: no cover


async def test_a_stalled_reader_is_cut_off_with_memory_bounded_and_the_others_get_everything(
    quiet_server: LiveServer,
) -> None:
    server = quiet_server
    size, batch = 2048, 100
    # The stalled socket takes what the kernel buffers for it (up to tcp_wmem's maximum, 4 MiB
    # by default) before its outbox (1 MiB) starts to fill, so how many events cut it off
    # depends on the machine: the publisher goes on until it is cut off, within this bound.
    most_events = 64 * 1024 * 1024 // size
    healthy = [await connect(server.ws_url("/ws/bulk/topics/flood")) for _ in range(3)]
    stalled = RawClient(server.host, server.port, "/ws/bulk/topics", receive_buffer=4096)
    publisher = await connect(server.ws_url("/ws/bulk/topics"))
    disconnects_before = hub.metrics.slow_consumer_disconnects
    closes_before = hub.metrics.closes[1013]
    try:
        stalled.send_frame(json.dumps({"type": "subscribe", "topic": "flood"}).encode())
        assert json.loads(stalled.recv_frame()[1]) == {"type": "subscribed", "topic": "flood"}
        # From here on the stalled client never reads again.
        before = rss_bytes()
        peak = before
        blob = "x" * size

        received: list[list[int]] = [[] for _ in healthy]
        progress = anyio.Event()
        published = 0

        async def publish() -> None:
            # Paced by the healthy readers (never more than a batch ahead of them, well within
            # their outbox bound): they keep up, and only the stalled reader falls behind. Two
            # batches more once it is cut off; then an end marker (event -1).
            nonlocal progress, published
            batches_after_cut = 2
            while batches_after_cut and published < most_events:
                if hub.metrics.slow_consumer_disconnects > disconnects_before:
                    batches_after_cut -= 1
                start = published
                for n in range(start, start + batch):
                    await send_json(publisher, {"type": "publish", "topic": "flood", "data": [n, blob]})
                published += batch
                while min(len(got) for got in received) < start:
                    await progress.wait()
                    progress = anyio.Event()
            await send_json(publisher, {"type": "publish", "topic": "flood", "data": [-1, ""]})

        async def consume(ws: ClientConnection, got: list[int]) -> None:
            nonlocal peak
            while (n := (await recv_json(ws))["data"][0]) != -1:
                got.append(n)
                progress.set()
                if len(got) % 500 == 0:
                    peak = max(peak, rss_bytes())

        with anyio.fail_after(120):
            async with anyio.create_task_group() as tg:
                tg.start_soon(publish)
                for ws, got in zip(healthy, received, strict=True):
                    tg.start_soon(consume, ws, got)
        assert hub.metrics.slow_consumer_disconnects == disconnects_before + 1, (
            f"{published} events of {size} bytes did not cut the stalled reader off"
        )
        for got in received:
            assert got == list(range(published))  # every event, once, in order
        growth = peak - before
        assert growth < 12 * 1024 * 1024, f"RSS grew by {growth / 2**20:.1f} MiB"
        # The stalled socket cannot even take its close frame: after the grace period the
        # server lets it go (a matter of time, so the counter is polled under a deadline).
        with anyio.fail_after(10):
            while hub.metrics.closes[1013] == closes_before:  # noqa: ASYNC110 - no event exists
                await anyio.sleep(0.05)
    finally:
        stalled.close()
        await publisher.close()
        for ws in healthy:
            await ws.close()


async def test_peers_vanishing_mid_broadcast_are_absorbed_quietly(
    server: LiveServer, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING):
        async with Witness(server):
            doomed = [await connect(server.ws_url("/ws/fast/topics/storm")) for _ in range(5)]
            steady = await connect(server.ws_url("/ws/fast/topics/storm"))
            async with connect(server.ws_url("/ws/fast/topics")) as publisher:
                for n in range(200):
                    await send_json(publisher, {"type": "publish", "topic": "storm", "data": n})
                    if n % 40 == 0 and doomed:
                        doomed.pop().transport.abort()  # gone without a closing handshake
                assert [(await recv_json(steady))["data"] for _ in range(200)] == list(range(200))
            await steady.close()
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert errors == []


async def test_metrics_count_what_happened(server: LiveServer) -> None:
    metrics = hub.metrics
    before = metrics.as_dict()
    async with connect(server.ws_url("/ws/fast/topics"), max_size=None) as ws:
        await ws.send("not json")
        await recv_json(ws)
        await ws.send("y" * 5000)
        assert (await closed_with(ws))[0] == 1009
    with pytest.raises(InvalidStatus):
        async with connect(server.ws_url("/ws/secure/x")):
            pass
    after = metrics.as_dict()
    assert after["messages_in"] == before["messages_in"] + 2  # type: ignore[operator]
    assert metrics.errors["invalid_message"] == before["errors"]["invalid_message"] + 1  # type: ignore[index]
    assert metrics.closes[1009] == int(before["closes"].get("1009", 0)) + 1  # type: ignore[attr-defined]
    assert metrics.refused["auth"] == before["refused"]["auth"] + 1  # type: ignore[index]
    text = metrics.render_prometheus()
    assert f'rtkit_closes_total{{code="1009"}} {metrics.closes[1009]}' in text
    assert f"rtkit_messages_in_total {metrics.messages_in}" in text
