"""Presence for ``RedisBackend``: who is in which group, across processes, without ghosts.

Each group lives in four keys (``{prefix}:presence:{group}:...``):

- ``order``: a sorted set, member id -> join number (from ``seq``), so ``members`` keeps join
  order;
- ``names``: a hash, member id -> display name;
- ``expiry``: a sorted set, member id -> deadline in Redis server milliseconds;
- ``seq``: the counter that hands out join numbers.

Every backend refreshes the deadlines of the members it holds on a heartbeat (``ttl / 3``), so
the members of a process that died without a word fall past their deadline within ``ttl``, and
``members`` drops them. Deadlines use the Redis server's clock (``TIME``), never a process's own,
so machines with skewed clocks agree. The keys themselves expire with the last deadline, so a
group whose every process died leaves nothing behind.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterable

import anyio
import redis.asyncio as aioredis
from redis.commands.core import AsyncScript
from redis.exceptions import RedisError

from rtkit.backends._redis_commands import CommandGuard, describe
from rtkit.errors import BackendError

_OUTAGES = (RedisError, OSError, TimeoutError)
# Members refreshed per round trip: 10,000 in one took 0.65 s of a 1 s timeout.
_REFRESH_BATCH = 1000

__all__ = ["Presence", "PresenceKeeper"]

logger = logging.getLogger("rtkit.redis")

# The deadline clock and the key expiry, shared by the scripts below.
_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS: order, expiry, names, seq. ARGV: member, name, ttl in ms.
# A member that is already present keeps its place; one that expired (or never joined) goes last.
_JOIN = (
    _NOW
    + """
local ttl = tonumber(ARGV[3])
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then
  redis.call('ZADD', KEYS[1], redis.call('INCR', KEYS[4]), ARGV[1])
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('ZADD', KEYS[2], now + ttl, ARGV[1])
for i = 1, 4 do
  if redis.call('PTTL', KEYS[i]) < ttl then
    redis.call('PEXPIRE', KEYS[i], ttl)
  end
end
return 1
"""
)

# KEYS: order, expiry, names. ARGV: member.
_LEAVE = """
redis.call('ZREM', KEYS[1], ARGV[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
return 1
"""

# KEYS: order, expiry, names. Removes the expired, then returns the names in join order.
_MEMBERS = (
    _NOW
    + """
local dead = redis.call('ZRANGEBYSCORE', KEYS[2], '-inf', now)
for _, member in ipairs(dead) do
  redis.call('ZREM', KEYS[1], member)
  redis.call('ZREM', KEYS[2], member)
  redis.call('HDEL', KEYS[3], member)
end
local names = {}
for _, member in ipairs(redis.call('ZRANGE', KEYS[1], 0, -1)) do
  local name = redis.call('HGET', KEYS[3], member)
  if name then
    names[#names + 1] = name
  end
end
return names
"""
)


class Presence:
    """The presence scripts, bound to one client and one key prefix."""

    def __init__(self, client: aioredis.Redis, prefix: str, ttl: float) -> None:
        self._client = client
        self._prefix = prefix
        self._ttl_ms = max(1, round(ttl * 1000))
        self._join: AsyncScript = client.register_script(_JOIN)
        self._leave: AsyncScript = client.register_script(_LEAVE)
        self._members: AsyncScript = client.register_script(_MEMBERS)

    def _keys(self, group: str) -> list[str]:
        base = f"{self._prefix}:presence:{group}:"
        return [base + "order", base + "expiry", base + "names", base + "seq"]

    async def join(self, group: str, member: str, name: str) -> None:
        """Add ``member`` (or refresh it) with a deadline ``ttl`` from now."""
        await self._join(keys=self._keys(group), args=[member, name, self._ttl_ms])

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group``."""
        await self._leave(keys=self._keys(group)[:3], args=[member])

    async def leave_many(self, entries: Iterable[tuple[str, str]]) -> None:
        """Remove every ``(group, member)`` in one round trip."""
        pipe = self._client.pipeline(transaction=False)
        async with pipe:
            for group, member in entries:
                await self._leave(keys=self._keys(group)[:3], args=[member], client=pipe)
            await pipe.execute()

    async def members(self, group: str) -> list[str]:
        """The names in ``group`` whose deadline has not passed, in join order."""
        names = await self._members(keys=self._keys(group)[:3])
        # A client built with decode_responses=True hands back str, the default bytes.
        return [n.decode() if isinstance(n, bytes) else str(n) for n in names]

    async def refresh(self, entries: Iterable[tuple[str, str, str]]) -> None:
        """Push back the deadline of every ``(group, member, name)`` in one round trip.

        A member whose entry expired meanwhile (a partition longer than the TTL) is added
        again, at the end of the join order: it is present, so it must be listed.
        """
        pipe = self._client.pipeline(transaction=False)
        async with pipe:
            for group, member, name in entries:
                await self._join(keys=self._keys(group), args=[member, name, self._ttl_ms], client=pipe)
            await pipe.execute()


class PresenceKeeper:
    """The presence of one backend: its calls, and the heartbeat that keeps its members alive.

    It remembers which members this process joined, refreshes them every ``ttl / 3`` seconds
    and at once after a reconnect (a restarted Redis has forgotten them), and removes them on a
    clean ``stop``.
    """

    def __init__(self, presence: Presence, guard: CommandGuard, *, ttl: float, timeout: float) -> None:
        self._presence = presence
        self._guard = guard
        self._interval = ttl / 3
        self._timeout = timeout
        self._joined: dict[tuple[str, str], str] = {}
        # Keeps a refresh from adding back a member that leaves while it runs.
        self._lock = asyncio.Lock()
        self._wake = asyncio.Event()
        self._task = asyncio.create_task(self._beat(), name="rtkit.redis.presence")

    async def stop(self) -> None:
        """Stop the heartbeat; remove this process's members now, if Redis answers in time.

        ``_REFRESH_BATCH`` members per round trip, each batch with the command timeout to
        itself, as the heartbeat does: a process with many members must not leave most of
        them listed for a whole TTL after a clean shutdown. At the first batch Redis does not
        take, the rest are left to expire.
        """
        self._task.cancel()
        await asyncio.wait([self._task])
        entries = list(self._joined)
        self._joined.clear()
        for start in range(0, len(entries), _REFRESH_BATCH):
            with anyio.move_on_after(self._timeout) as deadline:
                try:
                    await self._presence.leave_many(entries[start : start + _REFRESH_BATCH])
                except _OUTAGES as exc:
                    logger.info("presence left to expire after its TTL: %s", describe(exc))
                    return
            if deadline.cancelled_caught:
                logger.info("presence left to expire after its TTL: Redis did not answer in time")
                return

    def wake(self) -> None:
        """Refresh now rather than at the next beat."""
        self._wake.set()

    async def join(self, group: str, member: str, name: str) -> None:
        """See ``Backend.join``.

        A join that fails (``BackendUnavailableError``) may still have reached Redis: such an
        entry is not refreshed, and expires after ``presence_ttl``.
        """
        key = (group, member)
        # Recorded before the call, so that a leave made while it runs (it waits for the lock
        # and runs after it) takes the member out of the heartbeat's list for good: the last
        # call made decides, as on the memory backend.
        self._joined[key] = name
        try:
            async with self._guard(f"join {group!r}"), self._lock:
                await self._presence.join(group, member, name)
        except BaseException:
            if self._joined.get(key) is name:
                del self._joined[key]
            raise

    async def leave(self, group: str, member: str) -> None:
        """See ``Backend.leave``."""
        self._joined.pop((group, member), None)
        async with self._guard(f"leave {group!r}"), self._lock:
            await self._presence.leave(group, member)

    async def refresh_all(self) -> None:
        """Refresh every member this process joined, ``_REFRESH_BATCH`` per round trip.

        Each batch has the command timeout to itself, so the time a heartbeat may take grows
        with the members instead of making a large process's every heartbeat time out (and
        all its members expire). A member that left meanwhile is skipped, under the lock.
        """
        entries = list(self._joined.items())
        for start in range(0, len(entries), _REFRESH_BATCH):
            async with self._guard("presence heartbeat"), self._lock:
                batch = [
                    (group, member, name)
                    for (group, member), name in entries[start : start + _REFRESH_BATCH]
                    if self._joined.get((group, member)) is name
                ]
                if batch:
                    await self._presence.refresh(batch)

    async def members(self, group: str) -> list[str]:
        """See ``Backend.members``."""
        async with self._guard(f"members of {group!r}"):
            return await self._presence.members(group)

    async def _beat(self) -> None:
        while True:
            with anyio.move_on_after(self._interval):
                await self._wake.wait()
            self._wake.clear()
            if not self._joined:
                continue
            try:
                await self.refresh_all()
            except BackendError as exc:
                logger.warning("presence heartbeat failed; next try in %.1fs: %s", self._interval, exc)
            except Exception:
                # If the heartbeat stopped, every member of this process would vanish from
                # presence while still here: log the bug and keep beating.
                logger.exception("unexpected error in the presence heartbeat")
