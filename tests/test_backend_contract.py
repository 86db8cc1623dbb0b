"""The contract every backend fulfils, run against each of them (see ``rtkit.backends.base``).

One suite, parametrized over backends: the memory backend on asyncio and trio, the Redis backend
on asyncio (``redis.asyncio`` only; skipped when no Redis is reachable, unless
``RTKIT_REQUIRE_REDIS=1``). Each Redis test gets its own key prefix, so tests never see each
other's channels or presence.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable

import anyio
import pytest

from rtkit.backends.base import Backend
from rtkit.backends.memory import MemoryBackend
from rtkit.errors import NotStartedError
from tests.redis_support import Recorder, require_redis, unique_prefix

pytestmark = pytest.mark.anyio

WAIT = 5.0  # seconds any single wait may take before the test fails

_COMBOS = [
    pytest.param(("memory", "asyncio"), id="memory-asyncio"),
    pytest.param(("memory", "trio"), id="memory-trio"),
    pytest.param(("redis", "asyncio"), id="redis-asyncio", marks=pytest.mark.redis),
]


@pytest.fixture(params=_COMBOS)
def combo(request: pytest.FixtureRequest) -> tuple[str, str]:
    """(backend kind, event loop): memory on both loops, Redis on asyncio only."""
    kind, loop = request.param
    return str(kind), str(loop)


@pytest.fixture
def anyio_backend(combo: tuple[str, str]) -> str:
    """Narrows the suite's asyncio/trio parametrization to the combinations above."""
    return combo[1]


class Node:
    """A started backend and the receiver it delivers to."""

    def __init__(self, backend: Backend, receiver: Recorder) -> None:
        self.backend = backend
        self.receiver = receiver


class Medium:
    """Makes backends of one kind that share one medium (a process, or a Redis prefix)."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self.url = require_redis() if kind == "redis" else ""
        self.prefix = unique_prefix()
        self._made: list[Backend] = []

    def new(self) -> Backend:
        """A backend, not started."""
        backend: Backend
        if self.kind == "memory":
            backend = MemoryBackend()
        else:
            from rtkit.backends.redis import RedisBackend

            backend = RedisBackend(self.url, prefix=self.prefix)
        self._made.append(backend)
        return backend

    async def node(self) -> Node:
        """A started backend."""
        receiver = Recorder()
        backend = self.new()
        await backend.startup(receiver)
        return Node(backend, receiver)

    async def pair(self) -> tuple[Node, Node]:
        """Two started backends that see each other's publishes and presence.

        Two hubs cannot share one memory backend's process-wide medium unless they share the
        backend itself, so for memory the pair is one node twice.
        """
        first = await self.node()
        return first, (first if self.kind == "memory" else await self.node())

    async def close(self) -> None:
        """Shut down everything made, and remove the test's keys from Redis."""
        for backend in self._made:
            await backend.shutdown()
        if self.kind == "redis":
            import redis.asyncio as aioredis

            client = aioredis.Redis.from_url(self.url)
            try:
                keys = [key async for key in client.scan_iter(match=f"{self.prefix}:*")]
                if keys:
                    await client.delete(*keys)
            finally:
                await client.aclose()


@pytest.fixture
async def medium(combo: tuple[str, str]) -> AsyncIterator[Medium]:
    """The backend kind under test, cleaned up after the test."""
    made = Medium(combo[0])
    try:
        yield made
    finally:
        await made.close()


async def _sync(sender: Node, *receivers: Node) -> None:
    """Publish a marker on a channel everyone listens to, and wait for it everywhere.

    Messages of one publisher keep their order, so once the marker arrived, everything that
    publisher sent before it has arrived too: absence can be checked without sleeping.
    """
    marker = b"marker-" + unique_prefix().encode()
    await sender.backend.publish("sync", marker)
    with anyio.fail_after(WAIT):
        for node in receivers:
            await node.receiver.wait_for(functools.partial(_has, node.receiver, marker))


def _has(receiver: Recorder, marker: bytes) -> bool:
    return marker in receiver.received("sync")


async def test_use_before_startup_raises_not_started(medium: Medium) -> None:
    backend = medium.new()
    calls: list[Callable[[], Awaitable[object]]] = [
        lambda: backend.publish("c", b"x"),
        lambda: backend.subscribe("c"),
        lambda: backend.unsubscribe("c"),
        lambda: backend.join("g", "m", "n"),
        lambda: backend.leave("g", "m"),
        lambda: backend.members("g"),
    ]
    for call in calls:
        with pytest.raises(NotStartedError, match="startup"):
            await call()


async def test_use_after_shutdown_raises_not_started(medium: Medium) -> None:
    node = await medium.node()
    await node.backend.shutdown()
    with pytest.raises(NotStartedError):
        await node.backend.publish("c", b"x")
    with pytest.raises(NotStartedError):
        await node.backend.members("g")


async def test_shutdown_is_idempotent_and_safe_before_startup(medium: Medium) -> None:
    await medium.new().shutdown()
    node = await medium.node()
    await node.backend.subscribe("c")
    await node.backend.join("g", "m", "n")
    await node.backend.shutdown()
    await node.backend.shutdown()


@pytest.mark.parametrize(
    "payload",
    [
        b"",
        b"\x00" * 8 + b'{"type":"chat","text":"hi"}',
        bytes(range(256)),
        "h\u00e9llo \u2603 \U0001f600".encode(),
        b"\xff" * 100_000,
    ],
    ids=["empty", "hub-frame", "all-bytes", "utf8", "100k"],
)
async def test_publish_after_subscribe_arrives_byte_identical(medium: Medium, payload: bytes) -> None:
    node = await medium.node()
    await node.backend.subscribe("c")
    await node.backend.publish("c", payload)
    with anyio.fail_after(WAIT):
        await node.receiver.wait_for(lambda: bool(node.receiver.messages))
    assert node.receiver.messages == [("c", payload)]
    assert type(node.receiver.messages[0][1]) is bytes
    assert node.receiver.gaps == []


async def test_nothing_arrives_after_unsubscribe(medium: Medium) -> None:
    node = await medium.node()
    await node.backend.subscribe("c")
    await node.backend.subscribe("sync")
    await node.backend.unsubscribe("c")
    await node.backend.publish("c", b"late")
    await _sync(node, node)
    assert node.receiver.received("c") == []
    await node.backend.unsubscribe("never-subscribed")  # harmless


async def test_order_of_one_publisher_is_kept(medium: Medium) -> None:
    sender, listener = await medium.pair()
    await listener.backend.subscribe("c")
    expected = [b"%d" % i for i in range(300)]
    for payload in expected:
        await sender.backend.publish("c", payload)
    with anyio.fail_after(WAIT):
        await listener.receiver.wait_for(lambda: len(listener.receiver.received("c")) >= 300)
    assert listener.receiver.received("c") == expected
    assert listener.receiver.gaps == []


async def test_channels_are_isolated(medium: Medium) -> None:
    node = await medium.node()
    await node.backend.subscribe("a")
    await node.backend.subscribe("sync")
    await node.backend.publish("b", b"for b")
    await node.backend.publish("a", b"for a")
    await _sync(node, node)
    assert node.receiver.received("a") == [b"for a"]
    assert node.receiver.received("b") == []


async def test_backends_sharing_a_medium_see_each_others_publishes(medium: Medium) -> None:
    first, second = await medium.pair()
    for node in (first, second):
        await node.backend.subscribe("room")
        await node.backend.subscribe("sync")
    await first.backend.publish("room", b"from first")
    await second.backend.publish("room", b"from second")
    await _sync(first, first, second)
    await _sync(second, first, second)
    for node in {id(first): first, id(second): second}.values():
        assert sorted(node.receiver.received("room")) == [b"from first", b"from second"]


async def test_presence_keeps_join_order_across_backends(medium: Medium) -> None:
    first, second = await medium.pair()
    await first.backend.join("lobby", "m1", "alice")
    await second.backend.join("lobby", "m2", "bob")
    await first.backend.join("lobby", "m3", "carol")
    await second.backend.join("elsewhere", "m4", "dave")
    for node in (first, second):
        assert await node.backend.members("lobby") == ["alice", "bob", "carol"]
    await first.backend.join("lobby", "m1", "alice2")  # joining again renames, keeps the place
    await first.backend.leave("lobby", "m2")  # any process may remove a member
    await second.backend.leave("lobby", "unknown")  # ignored
    for node in (first, second):
        assert await node.backend.members("lobby") == ["alice2", "carol"]
        assert await node.backend.members("elsewhere") == ["dave"]
        assert await node.backend.members("empty") == []
    await first.backend.leave("lobby", "m1")
    await first.backend.leave("lobby", "m3")
    await second.backend.join("lobby", "m1", "alice")  # a member that left joins at the end
    await second.backend.join("lobby", "m5", "eve")
    assert await first.backend.members("lobby") == ["alice", "eve"]


async def test_health_is_up_while_working(medium: Medium) -> None:
    node = await medium.node()
    await node.backend.subscribe("c")
    health = node.backend.health()
    assert health.state == "up"
    assert health.reconnects == 0
