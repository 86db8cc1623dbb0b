"""What only the Redis backend has: outages, blackholes, gap reports, health, presence expiry,
construction, and a lazy import.

Outage tests run against a private ``redis-server`` that the test starts on a spare port, kills
and restarts, sometimes behind a TCP proxy that the test turns into a blackhole. Waits are
events under ``anyio.fail_after``; only behaviour that is about time (a health bound, a TTL, a
reconnect) is polled, in short steps, under a deadline.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import textwrap
import time
from collections.abc import AsyncIterator, Iterator

import anyio
import pytest

from tests.redis_support import (
    BlackholeProxy,
    Recorder,
    RedisServer,
    free_port,
    poll,
    poll_async,
    private_redis_server,
    require_redis,
    skip_or_fail,
    unique_prefix,
)

try:
    import redis.asyncio as aioredis
except ImportError:  # pragma: no cover - the dev install has it
    skip_or_fail("the redis package is not installed: pip install 'rtkit[redis]'")

from rtkit.backends._redis_wire import pack
from rtkit.backends.base import BackendHealth
from rtkit.backends.redis import RedisBackend
from rtkit.errors import (
    BackendError,
    BackendUnavailableError,
    ConfigurationError,
    NotStartedError,
)

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

# Short times keep the suite quick; the bounds asserted below follow from them.
TIMEOUT = 0.5
PING = 0.25
HEALTH_BOUND = PING + TIMEOUT  # the documented blackhole detection bound
SLACK = 0.35  # scheduling and a poll step on a busy machine


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """A private redis-server for this test alone, to kill and restart at will."""
    with private_redis_server() as server:
        yield server


@pytest.fixture
def redis_url() -> str:
    """The shared Redis (RTKIT_REDIS_URL), for tests that do not harm it."""
    return require_redis()


def _backend(url: str, prefix: str, **options: float) -> RedisBackend:
    settings: dict[str, float] = {"timeout": TIMEOUT, "ping_interval": PING, **options}
    return RedisBackend(url, prefix=prefix, **settings)


async def test_restart_during_a_stream_reconnects_and_reports_the_gap(
    redis_server: RedisServer,
) -> None:
    baseline = len(asyncio.all_tasks())
    prefix = unique_prefix()
    listener, sender = _backend(redis_server.url, prefix), _backend(redis_server.url, prefix)
    received = Recorder()
    await listener.startup(received)
    await sender.startup(Recorder())
    await listener.subscribe("stream")
    await listener.subscribe("dropped")
    await sender.join("room", "s1", "sender")
    sent: list[int] = []
    refused: list[float] = []
    stop = anyio.Event()

    async def publish_forever() -> None:
        n = 0
        while not stop.is_set():
            start = time.monotonic()
            try:
                await sender.publish("stream", b"%d" % n)
                sent.append(n)
                n += 1
            except BackendUnavailableError:
                refused.append(time.monotonic() - start)
            await anyio.sleep(0.002)  # pacing, not a wait for anything

    async with anyio.create_task_group() as tg:
        tg.start_soon(publish_forever)
        with anyio.fail_after(5):
            await received.wait_for(lambda: len(received.messages) >= 20)
        assert listener.health().state == "up"

        redis_server.kill()
        with anyio.fail_after(HEALTH_BOUND + SLACK):
            down_after = await poll(lambda: listener.health().state == "down")
        health = listener.health()
        assert health.last_error is not None
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="retry later"):
            await sender.publish("other", b"x")
        assert time.monotonic() - start < TIMEOUT + SLACK
        with pytest.raises(BackendUnavailableError):
            await sender.members("room")
        with pytest.raises(BackendUnavailableError):
            await listener.subscribe("while-down")
        start = time.monotonic()
        await listener.unsubscribe("dropped")  # returns at once: the next connection skips it
        assert time.monotonic() - start < 0.1
        with anyio.fail_after(5):
            await poll(lambda: len(refused) >= 3)

        await redis_server.restart()
        restarted = time.monotonic()
        with anyio.fail_after(5):
            await received.wait_for(lambda: bool(received.gaps))
        reconnect_took = time.monotonic() - restarted
        with anyio.fail_after(5):
            await poll(lambda: listener.health().state == sender.health().state == "up")
        # The restarted Redis forgot all presence; the reconnect refreshes it without waiting
        # for the next heartbeat (presence_ttl / 3 = 10 s away).
        with anyio.fail_after(2):
            await poll_async(lambda: _members_are(listener, "room", ["sender"]))
        count = len(sent)
        with anyio.fail_after(5):
            await received.wait_for(lambda: len(sent) > count + 20 and _got(received, sent[-1]))
        stop.set()

    print(f"\nkill -> down {down_after:.3f}s; restart -> resubscribed {reconnect_took:.3f}s")
    assert received.gaps == [("stream", 1)]
    assert listener.health().reconnects == 1
    assert sender.health().reconnects == 1
    assert max(refused) < TIMEOUT + SLACK
    numbers = [int(data) for _, data in received.messages]
    assert numbers == sorted(set(numbers))  # in order, no duplicates, some lost
    await listener.shutdown()
    await sender.shutdown()
    assert len(asyncio.all_tasks()) == baseline


def _got(recorder: Recorder, n: int) -> bool:
    return b"%d" % n in recorder.received("stream")


async def _members_are(backend: RedisBackend, group: str, expected: list[str]) -> bool:
    return await backend.members(group) == expected


async def test_a_stalled_command_degrades_health_until_one_succeeds(
    redis_server: RedisServer,
) -> None:
    backend = _backend(redis_server.url, unique_prefix())
    await backend.startup(Recorder())
    raw = aioredis.Redis.from_url(redis_server.url)
    try:
        # Writes (PUBLISH among them) hang; the pub/sub connection's PINGs still answer.
        await raw.client_pause(3000, all=False)
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError, match="no answer in time"):
            await backend.publish("c", b"x")
        assert time.monotonic() - start < TIMEOUT + SLACK
        health = backend.health()
        assert health.state == "degraded"
        assert health.last_error == "publish to 'c': no answer in time"
        await raw.client_unpause()
        await backend.publish("c", b"y")
        assert backend.health().state == "up"
    finally:
        await raw.aclose()
    await backend.shutdown()
    assert backend.health().state == "down"


async def test_blackhole_is_detected_within_the_bound(redis_server: RedisServer) -> None:
    baseline = len(asyncio.all_tasks())
    async with BlackholeProxy(redis_server.port).running() as proxy:
        backend = _backend(proxy.url, unique_prefix())
        received = Recorder()
        await backend.startup(received)
        await backend.subscribe("c")
        await backend.publish("c", b"before")
        with anyio.fail_after(5):
            await received.wait_for(lambda: bool(received.messages))

        proxy.blackhole()
        with anyio.fail_after(HEALTH_BOUND + SLACK):
            detected_after = await poll(lambda: backend.health().state == "down")
        start = time.monotonic()
        with pytest.raises(BackendUnavailableError):
            await backend.publish("c", b"into the void")
        publish_failed_after = time.monotonic() - start
        assert publish_failed_after < TIMEOUT + SLACK

        proxy.restore()
        restored = time.monotonic()
        with anyio.fail_after(10):
            await received.wait_for(lambda: bool(received.gaps))
        reconnect_took = time.monotonic() - restored
        await backend.publish("c", b"after")
        with anyio.fail_after(5):
            await received.wait_for(lambda: b"after" in received.received("c"))
        health = backend.health()
        assert health.state == "up"
        assert health.reconnects >= 1
        assert received.gaps == [("c", 1)]
        print(
            f"\nblackhole -> down {detected_after:.3f}s (bound {HEALTH_BOUND}s); publish failed "
            f"after {publish_failed_after:.3f}s; restore -> resubscribed {reconnect_took:.3f}s"
        )
        await backend.shutdown()
    assert len(asyncio.all_tasks()) == baseline


async def _publish_raw(redis_url: str, key: str, payloads: list[bytes]) -> None:
    """Publish ``payloads`` to ``key`` as they are, bypassing the backend (headers made by hand)."""
    raw = aioredis.Redis.from_url(redis_url)
    try:
        for payload in payloads:
            await raw.publish(key, payload)
    finally:
        await raw.aclose()


async def test_a_jump_in_sequence_is_reported_with_its_count(redis_url: str) -> None:
    prefix = unique_prefix()
    backend = _backend(redis_url, prefix)
    received = Recorder()
    await backend.startup(received)
    await backend.subscribe("j")
    publisher = b"P" * 8
    await _publish_raw(
        redis_url,
        f"{prefix}:j",
        [
            *(pack(publisher, seq, data) for seq, data in ((1, b"a"), (2, b"b"), (6, b"c"))),
            b"not ours",
            pack(publisher, 7, b"d"),
            pack(publisher, 7, b"d"),  # resent: a duplicate
            pack(b"Q" * 8, 40, b"other publisher"),
        ],
    )
    with anyio.fail_after(5):
        await received.wait_for(lambda: len(received.messages) == 5)
    assert received.received("j") == [b"a", b"b", b"c", b"d", b"other publisher"]
    assert received.gaps == [("j", 3)]
    await backend.shutdown()


async def test_presence_of_a_vanished_process_expires_after_the_ttl(redis_url: str) -> None:
    prefix, ttl = unique_prefix(), 1.0
    # Another process joins, then dies by SIGKILL: no shutdown, no leave.
    script = textwrap.dedent(
        f"""
        import asyncio
        from rtkit.backends.redis import RedisBackend

        class Receiver:
            def deliver(self, channel, data): pass
            def gap(self, channel, missed): pass

        async def main():
            backend = RedisBackend({redis_url!r}, prefix={prefix!r}, presence_ttl={ttl})
            await backend.startup(Receiver())
            await backend.join("room", "ghost-id", "ghost")
            print("joined", flush=True)
            await asyncio.sleep(60)

        asyncio.run(main())
        """
    )
    local = _backend(redis_url, prefix, presence_ttl=ttl)
    await local.startup(Recorder())
    await local.join("room", "alive-id", "alive")
    async with await anyio.open_process([sys.executable, "-c", script]) as process:
        assert process.stdout is not None
        output = b""
        with anyio.fail_after(15):
            while b"\n" not in output:
                output += await process.stdout.receive()
        assert output.strip() == b"joined"
        assert await local.members("room") == ["alive", "ghost"]
        process.kill()
        await process.wait()
        killed = time.monotonic()
    with anyio.fail_after(ttl + 1.0):
        await poll_async(lambda: _members_are(local, "room", ["alive"]))
    expired_after = time.monotonic() - killed
    # The living backend's heartbeat keeps its member well past the TTL.
    with anyio.fail_after(ttl + 1.0):
        await poll(lambda: time.monotonic() - killed > 1.5 * ttl, step=0.05)
    assert await local.members("room") == ["alive"]
    print(f"\nghost expired {expired_after:.3f}s after the kill (ttl {ttl}s)")
    await local.shutdown()


async def test_clean_shutdown_removes_its_members_at_once(redis_url: str) -> None:
    prefix = unique_prefix()
    first, second = _backend(redis_url, prefix), _backend(redis_url, prefix)
    await first.startup(Recorder())
    await second.startup(Recorder())
    await first.join("room", "1", "one")
    await second.join("room", "2", "two")
    await first.shutdown()
    assert await second.members("room") == ["two"]
    await second.shutdown()


async def test_construction_from_an_existing_client_leaves_it_open(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url, decode_responses=True)
    try:
        backend = RedisBackend.from_client(client, prefix=unique_prefix(), timeout=TIMEOUT)
        received = Recorder()
        await backend.startup(received)
        await backend.subscribe("c")
        await backend.publish("c", b"\xff\x00 bytes, whatever the client decodes")
        with anyio.fail_after(5):
            await received.wait_for(lambda: bool(received.messages))
        assert received.received("c") == [b"\xff\x00 bytes, whatever the client decodes"]
        await backend.join("g", "m", "n\u00e9")
        assert await backend.members("g") == ["n\u00e9"]
        assert backend.health().state == "up"
        await backend.shutdown()
        assert await client.ping() is True
    finally:
        await client.aclose()


async def test_startup_fails_fast_when_redis_is_out_of_reach() -> None:
    baseline = len(asyncio.all_tasks())
    backend = RedisBackend(f"redis://127.0.0.1:{free_port()}/0", timeout=TIMEOUT)
    start = time.monotonic()
    with pytest.raises(BackendUnavailableError, match="cannot reach Redis"):
        await backend.startup(Recorder())
    assert time.monotonic() - start < TIMEOUT + SLACK
    with pytest.raises(NotStartedError):
        await backend.publish("c", b"x")
    assert backend.health().state == "down"
    await backend.shutdown()
    assert len(asyncio.all_tasks()) == baseline


@pytest.mark.parametrize("anyio_backend", ["trio"])
async def test_startup_under_trio_is_refused() -> None:
    backend = RedisBackend("redis://127.0.0.1:6379/0")
    with pytest.raises(ConfigurationError, match="asyncio only"):
        await backend.startup(Recorder())


def test_construction_validates_its_arguments() -> None:
    with pytest.raises(ConfigurationError, match="URL"):
        RedisBackend("http://127.0.0.1:6379")
    with pytest.raises(ConfigurationError, match="prefix"):
        RedisBackend("redis://127.0.0.1", prefix="")
    with pytest.raises(ConfigurationError, match="timeout"):
        RedisBackend("redis://127.0.0.1", timeout=0)
    with pytest.raises(ConfigurationError, match="presence_ttl"):
        RedisBackend("redis://127.0.0.1", presence_ttl=-1)
    with pytest.raises(ConfigurationError, match=r"redis\.asyncio\.Redis"):
        RedisBackend.from_client(object())  # type: ignore[arg-type]
    assert RedisBackend("unix:///tmp/redis.sock").health().state == "down"


def _python(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=False
    )


def test_import_rtkit_does_not_import_redis() -> None:
    result = _python("import rtkit, sys; assert 'redis' not in sys.modules, 'redis was imported'")
    assert result.returncode == 0, result.stderr
    result = _python("import rtkit, sys; rtkit.RedisBackend; assert 'redis' in sys.modules")
    assert result.returncode == 0, result.stderr
    star = "from rtkit import *\nfrom rtkit.backends import *\nimport sys; assert 'redis' not in sys.modules"
    result = _python(star)
    assert result.returncode == 0, result.stderr


def test_a_missing_redis_package_names_the_fix() -> None:
    code = "import sys; sys.modules['redis'] = None\nfrom rtkit import RedisBackend"
    result = _python(code)
    assert result.returncode != 0
    assert "pip install 'rtkit[redis]'" in result.stderr


class _Fragile(Recorder):
    """A receiver whose first delivery raises."""

    def deliver(self, channel: str, data: bytes) -> None:
        if not self.messages and data == b"boom":
            self.messages.append((channel, b"raised"))
            raise RuntimeError("a bug in the receiver")
        super().deliver(channel, data)


async def test_a_receiver_that_raises_costs_one_message_not_the_connection(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    backend = _backend(redis_url, unique_prefix())
    received = _Fragile()
    await backend.startup(received)
    await backend.subscribe("c")
    await backend.publish("c", b"boom")
    await backend.publish("c", b"fine")
    with anyio.fail_after(5):
        await received.wait_for(lambda: b"fine" in received.received("c"))
    assert received.received("c") == [b"raised", b"fine"]
    assert "the receiver failed" in caplog.text
    assert backend.health() == BackendHealth(state="up", last_error=None, reconnects=0)
    await backend.shutdown()


class _GapFails(Recorder):
    """A receiver whose gap notices raise."""

    def gap(self, channel: str, missed: int) -> None:
        super().gap(channel, missed)
        raise RuntimeError("a bug in the receiver's gap handling")


async def test_a_failing_gap_notice_does_not_cost_the_message_that_revealed_the_gap(
    redis_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    prefix = unique_prefix()
    backend = _backend(redis_url, prefix)
    received = _GapFails()
    await backend.startup(received)
    await backend.subscribe("g")
    # Number 2 was lost in transit.
    lost_one = [pack(b"P" * 8, seq, data) for seq, data in ((1, b"a"), (3, b"c"), (4, b"d"))]
    await _publish_raw(redis_url, f"{prefix}:g", lost_one)
    with anyio.fail_after(5):
        await received.wait_for(lambda: b"d" in received.received("g"))
    assert received.received("g") == [b"a", b"c", b"d"]
    assert received.gaps == [("g", 1)]
    assert "failed on a gap notice" in caplog.text
    await backend.shutdown()


async def test_a_refusal_by_redis_is_a_backend_error_not_an_outage(redis_url: str) -> None:
    prefix = unique_prefix()
    backend = _backend(redis_url, prefix)
    await backend.startup(Recorder())
    raw = aioredis.Redis.from_url(redis_url)
    try:
        await raw.set(f"{prefix}:presence:g:order", "not a sorted set", ex=60)
        with pytest.raises(BackendError, match="refused") as caught:
            await backend.members("g")
        assert not isinstance(caught.value, BackendUnavailableError)
        assert backend.health().state == "up"
    finally:
        await raw.delete(f"{prefix}:presence:g:order")
        await raw.aclose()
    await backend.shutdown()


async def test_a_starved_event_loop_is_not_mistaken_for_a_blackhole(redis_url: str) -> None:
    import redis as sync_redis

    prefix = unique_prefix()
    backend = _backend(redis_url, prefix)
    received = Recorder()
    await backend.startup(received)
    await backend.subscribe("c")
    client = sync_redis.Redis.from_url(redis_url)
    try:
        # The loop is held (as by a CPU-bound handler) past the detection bound, while Redis
        # does send: what waits in the buffer proves the connection alive.
        client.publish(f"{prefix}:c", pack(b"S" * 8, 1, b"sent while starved"))
        time.sleep(HEALTH_BOUND + 0.3)  # noqa: ASYNC251 - blocking the loop is the point
    finally:
        client.close()
    with anyio.fail_after(5):
        await received.wait_for(lambda: bool(received.messages))
    assert received.gaps == []
    assert backend.health().reconnects == 0
    await backend.shutdown()


def test_the_sequence_tracker_remembers_a_bounded_number_of_publishers(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rtkit.backends import _redis_wire

    monkeypatch.setattr(_redis_wire, "_MAX_PUBLISHERS", 2)
    tracker = _redis_wire.SequenceTracker()
    for publisher in (b"A" * 8, b"B" * 8, b"C" * 8):
        assert tracker.check("c", publisher, 1) == 0
    assert list(tracker._last["c"]) == [b"B" * 8, b"C" * 8]  # the oldest was forgotten
    assert tracker.check("c", b"C" * 8, 4) == 2  # the others still count
    # B talks again, then a newcomer arrives: C, heard from least recently, goes, not B.
    assert tracker.check("c", b"B" * 8, 2) == 0
    assert tracker.check("c", b"D" * 8, 1) == 0
    assert list(tracker._last["c"]) == [b"B" * 8, b"D" * 8]
    assert tracker.check("c", b"B" * 8, 4) == 1  # B's loss is still counted


def test_the_sequence_tracker_drops_a_number_it_has_seen() -> None:
    from rtkit.backends import _redis_wire

    tracker = _redis_wire.SequenceTracker()
    publisher = b"P" * 8
    assert [tracker.check("c", publisher, n) for n in (1, 2, 2, 1, 3, 5)] == [
        0,
        0,
        _redis_wire.DUPLICATE,
        _redis_wire.DUPLICATE,
        0,
        1,
    ]


@contextlib.asynccontextmanager
async def _pair(redis_url: str, channel: str) -> AsyncIterator[tuple[RedisBackend, Recorder]]:
    """A publishing backend, and a second one subscribed to ``channel`` recording what comes."""
    prefix = unique_prefix()
    publisher, listener = _backend(redis_url, prefix), _backend(redis_url, prefix)
    received = Recorder()
    await publisher.startup(Recorder())
    await listener.startup(received)
    try:
        await listener.subscribe(channel)
        yield publisher, received
    finally:
        await publisher.shutdown()
        await listener.shutdown()


async def test_publish_state_stays_bounded_across_many_channels(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from rtkit.backends import redis as redis_module

    monkeypatch.setattr(redis_module, "_MAX_OUTGOING", 3)
    async with _pair(redis_url, "first") as (publisher, received):
        await publisher.publish("first", b"1")
        for n in range(5):  # pushes "first" out of the remembered channels
            await publisher.publish(f"other{n}", b"x")
        assert len(publisher._outgoing) == 3
        assert "first" not in publisher._outgoing
        await publisher.publish("first", b"2")  # counts from 1 again, under a new id
        await publisher.publish("first", b"3")
        with anyio.fail_after(5):
            await received.wait_for(lambda: len(received.messages) == 3)
        assert received.received("first") == [b"1", b"2", b"3"]
        assert received.gaps == []  # a restarted count is not a loss


async def test_subscribes_that_fail_during_an_outage_leave_nothing_behind(
    redis_server: RedisServer,
) -> None:
    # Clients may retry subscribes as often as they like while Redis is down: each failed
    # attempt must be forgotten, or a long outage grows memory without bound.
    backend = _backend(redis_server.url, unique_prefix())
    await backend.startup(Recorder())
    subscriber = backend._subscriber
    assert subscriber is not None
    redis_server.kill()
    with anyio.fail_after(HEALTH_BOUND + SLACK):
        await poll(lambda: backend.health().state == "down")
    failures: list[BaseException] = []

    async def attempt(channel: str) -> None:
        try:
            await backend.subscribe(channel)
        except BackendUnavailableError as exc:
            failures.append(exc)

    with anyio.fail_after(TIMEOUT * 4 + SLACK):
        async with anyio.create_task_group() as tg:
            for n in range(50):
                tg.start_soon(attempt, f"c{n % 10}")  # ten channels, five attempts each
    assert len(failures) == 50
    assert subscriber._orphans == {}
    assert subscriber._wanted == {}
    # Redis comes back: nothing of the failed attempts is subscribed, and a new one works.
    await redis_server.restart()
    with anyio.fail_after(5):
        await poll(lambda: backend.health().state == "up")
    await backend.subscribe("after")
    assert set(subscriber._wanted.values()) == {"after"}
    await backend.shutdown()


async def test_a_publish_resent_by_the_client_library_is_delivered_once(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # redis-py resends a command whose connection broke before the answer came, though Redis
    # may have run it: the subscriber must not get the message twice.
    async with _pair(redis_url, "d") as (publisher, received):
        client = publisher._client
        assert client is not None
        real_publish = client.publish

        async def publish_twice(channel: str, message: bytes) -> int:
            await real_publish(channel, message)  # Redis ran it, the answer was lost...
            return await real_publish(channel, message)  # ...so the library sent it again

        monkeypatch.setattr(client, "publish", publish_twice)
        await publisher.publish("d", b"once")
        monkeypatch.undo()
        await publisher.publish("d", b"after")
        with anyio.fail_after(5):
            await received.wait_for(lambda: b"after" in received.received("d"))
        assert received.received("d") == [b"once", b"after"]
        assert received.gaps == []


async def test_a_publish_that_failed_before_redis_is_reported_as_one_lost(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The number is spent before the send: a publish that never reached Redis leaves a hole.
    from redis.exceptions import ConnectionError as RedisConnectionError

    async with _pair(redis_url, "h") as (publisher, received):
        await publisher.publish("h", b"1")
        client = publisher._client
        assert client is not None

        async def never_sent(channel: str, message: bytes) -> int:
            raise RedisConnectionError("connection reset before the command was written")

        monkeypatch.setattr(client, "publish", never_sent)
        with pytest.raises(BackendUnavailableError):
            await publisher.publish("h", b"2")
        monkeypatch.undo()
        await publisher.publish("h", b"3")
        with anyio.fail_after(5):
            await received.wait_for(lambda: b"3" in received.received("h"))
        assert received.received("h") == [b"1", b"3"]
        assert received.gaps == [("h", 1)]


async def test_the_last_of_overlapping_join_and_leave_decides(redis_url: str) -> None:
    # A leave made while a join is in flight runs after it: the member must be gone, and not
    # come back with the next heartbeat (which refreshes what the keeper lists as joined).
    backend = _backend(redis_url, unique_prefix())
    await backend.startup(Recorder())
    try:
        await asyncio.gather(backend.join("g", "m1", "ann"), backend.leave("g", "m1"))
        assert await backend.members("g") == []
        presence = backend._presence
        assert presence is not None
        assert presence._joined == {}
        await asyncio.gather(backend.leave("g", "m2"), backend.join("g", "m2", "bo"))
        assert await backend.members("g") == ["bo"]
        assert list(presence._joined) == [("g", "m2")]
    finally:
        await backend.shutdown()


async def test_the_presence_heartbeat_refreshes_in_batches(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Each batch gets the command timeout to itself: a process with many members must not
    # have every heartbeat time out, and all its members expire.
    from rtkit.backends import _redis_presence

    monkeypatch.setattr(_redis_presence, "_REFRESH_BATCH", 2)
    backend = _backend(redis_url, unique_prefix())
    await backend.startup(Recorder())
    try:
        for n in range(5):
            await backend.join("g", f"m{n}", f"user{n}")
        presence = backend._presence
        assert presence is not None
        batches: list[list[str]] = []
        leaving: list[asyncio.Task[None]] = []
        real_refresh = presence._presence.refresh

        async def recording(entries: list[tuple[str, str, str]]) -> None:
            batches.append([member for _, member, _ in entries])
            if not leaving:  # m3 leaves while the first batch runs: it waits for the lock
                leaving.append(asyncio.ensure_future(backend.leave("g", "m3")))
            await real_refresh(entries)

        monkeypatch.setattr(presence._presence, "refresh", recording)
        await presence.refresh_all()
        await leaving[0]
        assert batches == [["m0", "m1"], ["m2"], ["m4"]]  # m3 left between batches: skipped
        assert await backend.members("g") == ["user0", "user1", "user2", "user4"]
    finally:
        await backend.shutdown()


@pytest.mark.parametrize("redis_answers", [True, False])
async def test_a_clean_shutdown_gives_each_batch_of_leaves_its_own_deadline(
    redis_url: str, monkeypatch: pytest.MonkeyPatch, redis_answers: bool
) -> None:
    # Redis answers each batch in 0.4 s of a 1 s timeout: three batches take longer than one
    # timeout, and every member must still be gone (under a single deadline for all of them,
    # the last batch would be cut off and its members stay listed for a whole TTL). When Redis
    # never answers the second batch, the shutdown gives up there and leaves the rest to expire.
    from rtkit.backends import _redis_presence

    monkeypatch.setattr(_redis_presence, "_REFRESH_BATCH", 2)
    prefix = unique_prefix()
    leaving, staying = _backend(redis_url, prefix, timeout=1.0), _backend(redis_url, prefix)
    await leaving.startup(Recorder())
    await staying.startup(Recorder())
    try:
        for n in range(5):
            await leaving.join("g", f"m{n}", f"user{n}")
        await staying.join("g", "s", "stays")
        presence = leaving._presence
        assert presence is not None
        batches: list[list[str]] = []
        real_leave_many = presence._presence.leave_many

        async def slow(entries: list[tuple[str, str]]) -> None:
            batches.append([member for _, member in entries])
            if len(batches) == 2 and not redis_answers:
                await anyio.sleep_forever()  # Redis out of reach: the batch's deadline ends it
            await anyio.sleep(0.4)  # a slow Redis, not a readiness wait
            await real_leave_many(entries)

        monkeypatch.setattr(presence._presence, "leave_many", slow)
        with anyio.fail_after(10):
            await leaving.shutdown()
        if redis_answers:
            assert batches == [["m0", "m1"], ["m2", "m3"], ["m4"]]
            assert await staying.members("g") == ["stays"]
        else:
            assert batches == [["m0", "m1"], ["m2", "m3"]]  # the third is not tried
            assert await staying.members("g") == ["user2", "user3", "user4", "stays"]  # join order
    finally:
        await staying.shutdown()
