"""The Redis pub/sub reader on its own: pairing answers with commands, and refusals.

Most tests drive ``Subscriber`` through a scripted connection, so that the order in which
Redis's answers arrive is the test's choice, not the machine's timing. The ACL test runs
against a private ``redis-server``, which it configures.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any, cast

import anyio
import pytest

from tests.redis_support import Recorder, private_redis_server, skip_or_fail

try:
    import redis.asyncio as aioredis
    from redis.asyncio.connection import AbstractConnection
except ImportError:  # pragma: no cover - the dev install has it
    skip_or_fail("the redis package is not installed: pip install 'rtkit[redis]'")

from rtkit.backends._redis_subscriber import Subscriber
from rtkit.backends.redis import RedisBackend
from rtkit.errors import BackendError, BackendUnavailableError

pytestmark = [pytest.mark.anyio, pytest.mark.redis]

TIMEOUT = 0.2  # how long a subscribe waits for its confirmation


@pytest.fixture
def anyio_backend() -> str:
    """redis.asyncio runs on asyncio only."""
    return "asyncio"


class ScriptedConnection:
    """Stands in for a redis-py connection: records commands, answers what the test feeds."""

    def __init__(self) -> None:
        self.is_connected = False
        self.commands: list[tuple[str, ...]] = []
        self.command_sent = asyncio.Event()
        self._answers: asyncio.Queue[object] = asyncio.Queue()

    async def connect(self) -> None:
        self.is_connected = True

    async def disconnect(self, nowait: bool = False) -> None:
        self.is_connected = False

    async def send_command(self, *args: Any, check_health: bool = True) -> None:
        self.commands.append(tuple(a.decode() if isinstance(a, bytes) else str(a) for a in args))
        self.command_sent.set()

    async def read_response(self, timeout: float | None = None) -> object:  # noqa: ASYNC109 - redis-py's signature
        try:
            answer = await asyncio.wait_for(self._answers.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(answer, Exception):
            raise answer
        return answer

    def answer(self, answer: object) -> None:
        self._answers.put_nowait(answer)

    async def wait_for_command(self, count: int) -> None:
        """Wait until ``count`` commands were sent in all."""
        while len(self.commands) < count:
            self.command_sent.clear()
            await self.command_sent.wait()


@pytest.fixture
async def scripted() -> AsyncIterator[tuple[Subscriber, ScriptedConnection]]:
    conn = ScriptedConnection()
    subscriber = Subscriber(
        lambda: cast(AbstractConnection, conn),
        on_message=lambda channel, data: None,
        on_resubscribed=lambda channel: None,
        on_reconnected=lambda: None,
        timeout=TIMEOUT,
        ping_interval=60.0,  # no PING during a test
        backoff=(0.01, 0.05),
    )
    await subscriber.start()
    try:
        yield subscriber, conn
    finally:
        await subscriber.stop()


def _confirm(kind: str, key: bytes, count: int) -> list[object]:
    return [kind.encode(), key, count]


async def test_a_failed_subscribe_keeps_nothing_even_when_an_earlier_attempt_is_confirmed(
    scripted: tuple[Subscriber, ScriptedConnection],
) -> None:
    # Redis is slow: the first attempt gives up, and its confirmation arrives while the retry
    # waits; the retry gives up too. Both callers were told "failed", so the channel must
    # not stay subscribed: the reader undoes it once the last confirmation is in.
    subscriber, conn = scripted
    with anyio.fail_after(5):
        with pytest.raises(BackendUnavailableError):
            await subscriber.subscribe(b"k", "topic")
        async with anyio.create_task_group() as tg:
            retry_failed = anyio.Event()

            async def retry() -> None:
                with pytest.raises(BackendUnavailableError):
                    await subscriber.subscribe(b"k", "topic")
                retry_failed.set()

            tg.start_soon(retry)
            await conn.wait_for_command(2)
            conn.answer(_confirm("subscribe", b"k", 1))  # the first attempt's
            await retry_failed.wait()
        conn.answer(_confirm("subscribe", b"k", 1))  # the retry's, after it gave up
        await conn.wait_for_command(3)
    assert conn.commands == [("SUBSCRIBE", "k"), ("SUBSCRIBE", "k"), ("UNSUBSCRIBE", "k")]
    assert subscriber.state() == "up"
    # Nothing would be resubscribed after a reconnect either.
    assert not subscriber._wanted


async def test_an_error_answer_fails_its_own_command_and_keeps_the_connection(
    scripted: tuple[Subscriber, ScriptedConnection],
) -> None:
    from redis.exceptions import NoPermissionError

    subscriber, conn = scripted
    with anyio.fail_after(5):
        async with anyio.create_task_group() as tg:
            outcomes: dict[str, object] = {}

            async def subscribe(key: bytes) -> None:
                try:
                    await subscriber.subscribe(key, key.decode())
                    outcomes[key.decode()] = "subscribed"
                except BackendError as exc:
                    outcomes[key.decode()] = exc

            tg.start_soon(subscribe, b"allowed")
            await conn.wait_for_command(1)
            tg.start_soon(subscribe, b"denied")
            await conn.wait_for_command(2)
            conn.answer(_confirm("subscribe", b"allowed", 1))
            conn.answer(NoPermissionError("this user has no permissions to access one of the channels"))
    assert outcomes["allowed"] == "subscribed"
    refused = outcomes["denied"]
    assert isinstance(refused, BackendError)
    assert not isinstance(refused, BackendUnavailableError)
    assert "denied" in str(refused)
    assert "no permissions" in str(refused)
    # The connection stays: no reconnect, the allowed channel still live.
    assert subscriber.reconnects == 0
    assert subscriber.state() == "up"
    assert subscriber._active == {b"allowed"}
    assert set(subscriber._wanted) == {b"allowed"}
    assert not subscriber._sent
    assert not subscriber._expect


async def test_a_subscribe_refused_by_an_acl_is_a_backend_error_not_an_outage() -> None:
    with private_redis_server() as server:
        admin = aioredis.Redis.from_url(server.url)
        try:
            # The user may use the rooms' channels, not the admin topic's.
            await admin.acl_setuser(
                "app",
                enabled=True,
                passwords=["+pw"],
                keys=["*"],
                commands=["+@all"],
                reset_channels=True,
                channels=["app:room:*"],
            )
        finally:
            await admin.aclose()
        backend = RedisBackend(server.url.replace("redis://", "redis://app:pw@"), prefix="app")
        received = Recorder()
        await backend.startup(received)
        try:
            await backend.subscribe("room:lobby")
            with anyio.fail_after(5):
                with pytest.raises(BackendError, match="topic:admin") as refused:
                    await backend.subscribe("topic:admin")
                assert not isinstance(refused.value, BackendUnavailableError)
                await backend.publish("room:lobby", b"still here")
                await received.wait_for(lambda: bool(received.messages))
            assert received.received("room:lobby") == [b"still here"]
            assert received.gaps == []
            health = backend.health()
            assert health.state == "up"
            assert health.reconnects == 0
        finally:
            await backend.shutdown()


async def test_a_channel_nobody_wants_any_more_is_unsubscribed_at_its_next_message(
    scripted: tuple[Subscriber, ScriptedConnection],
) -> None:
    subscriber, conn = scripted
    with anyio.fail_after(5):
        # Queued ahead: the reader runs only once subscribe() waits, its SUBSCRIBE sent.
        conn.answer(_confirm("subscribe", b"k", 1))
        await subscriber.subscribe(b"k", "topic")
        # The unsubscribe cannot get the connection within its timeout (another command holds
        # it): it gives up without sending anything, as documented, and drops the messages.
        assert subscriber._lock is not None
        async with subscriber._lock:
            await subscriber.unsubscribe(b"k")
        assert conn.commands == [("SUBSCRIBE", "k")]
        # Redis still sends the channel: its first message has the reader undo the subscription.
        conn.answer([b"message", b"k", b"late"])
        await conn.wait_for_command(2)
    assert conn.commands[-1] == ("UNSUBSCRIBE", "k")
