"""The receiving side of ``RedisBackend``: one pub/sub connection, one reader task.

The reader owns the connection's input. It hands messages on, matches each subscribe and
unsubscribe confirmation to the call waiting for it (Redis answers every channel of every
command, in order, so a FIFO per channel pairs them exactly), fails the callers of a command
Redis refused (an error answer belongs to the oldest command not yet answered, and leaves
the connection as it was), pings when the line has been quiet
for ``ping_interval`` and gives the connection up when nothing at all came back within
``ping_interval + timeout``: that is what catches a blackhole, a connection that is open but
carries nothing. After a loss it reconnects with capped, jittered exponential backoff, forever,
and resubscribes every channel; each channel that was live before the loss is reported through
``on_resubscribed`` once Redis confirmed it again.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections import deque
from collections.abc import Callable
from typing import Any, Literal

import anyio
from redis.asyncio import Redis
from redis.asyncio.connection import AbstractConnection
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import RedisError, ResponseError

from rtkit.backends._redis_commands import describe
from rtkit.errors import BackendError, BackendUnavailableError, NotStartedError

__all__ = ["OUTAGE_ERRORS", "Subscriber", "SubscriberState", "connection_factory"]

logger = logging.getLogger("rtkit.redis")

#: What a network or server failure looks like from redis-py and asyncio.
OUTAGE_ERRORS: tuple[type[BaseException], ...] = (RedisError, OSError, TimeoutError)

SubscriberState = Literal["up", "resync", "down"]

_SUBSCRIBE = b"subscribe"
_UNSUBSCRIBE = b"unsubscribe"
_MESSAGE = b"message"
_PING = b"ping"
_RESUBSCRIBE_CHUNK = 500  # channels per SUBSCRIBE command when resubscribing


class _Pending:
    """A (un)subscribe sent for one channel and the calls waiting for its confirmation."""

    __slots__ = ("kind", "waiters")

    def __init__(self, kind: bytes, waiters: list[asyncio.Future[None]]) -> None:
        self.kind = kind
        self.waiters = waiters


def _resolve(waiters: list[asyncio.Future[None]]) -> None:
    for waiter in waiters:
        if not waiter.done():
            waiter.set_result(None)


def connection_factory(client: Redis, timeout: float) -> Callable[[], AbstractConnection]:
    """Makes pub/sub connections with ``client``'s settings (host, auth, TLS...), tuned for
    the reader: RESP2, bytes, ``timeout`` for connects and writes, no retries of their own."""
    pool = client.connection_pool
    kwargs: dict[str, Any] = {
        key: value
        for key, value in pool.connection_kwargs.items()
        # Server maintenance hooks belong to the pool's own connections.
        if not key.startswith(("maint_notifications", "orig_")) and key != "himport_registry"
    }
    kwargs.update(
        # RESP2 makes pub/sub messages plain replies, read by the one reader.
        protocol=2,
        decode_responses=False,
        socket_timeout=timeout,
        socket_connect_timeout=timeout,
        # The reader does its own backoff and its own pings.
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
        retry_on_timeout=False,
        health_check_interval=0,
    )
    connection_class = pool.connection_class

    def connect() -> AbstractConnection:
        return connection_class(**kwargs)

    return connect


class Subscriber:
    """Keeps one pub/sub connection subscribed to the wanted channels, whatever happens.

    Args:
        connect: makes a new, unconnected connection (called again for each reconnect).
        on_message: called with ``(channel, raw message)`` for each message of a wanted channel.
        on_resubscribed: called with a channel confirmed again after a reconnect.
        on_reconnected: called when a connection is back after a loss.
        timeout: seconds allowed for a connect, a confirmation, or a PING's answer.
        ping_interval: seconds of silence after which the reader sends a PING.
        backoff: ``(first, cap)`` seconds between reconnect attempts.
    """

    def __init__(
        self,
        connect: Callable[[], AbstractConnection],
        *,
        on_message: Callable[[str, bytes], None],
        on_resubscribed: Callable[[str], None],
        on_reconnected: Callable[[], None],
        timeout: float,
        ping_interval: float,
        backoff: tuple[float, float],
    ) -> None:
        self._connect = connect
        self._on_message = on_message
        self._on_resubscribed = on_resubscribed
        self._on_reconnected = on_reconnected
        self._timeout = timeout
        self._ping_interval = ping_interval
        self._backoff_first, self._backoff_cap = backoff
        self._wanted: dict[bytes, str] = {}  # Redis channel name -> the hub's channel name
        self._active: set[bytes] = set()  # confirmed on the current connection
        self._resync: set[bytes] = set()  # live before the last loss, not yet confirmed again
        self._expect: dict[bytes, deque[_Pending]] = {}
        self._orphans: dict[bytes, list[asyncio.Future[None]]] = {}  # waiting for a connection
        # Commands sent on the current connection and not yet fully answered, oldest first, with
        # the channels still to be confirmed: Redis answers in order, so an error reply belongs
        # to the oldest (see _refused).
        self._sent: deque[tuple[bytes, deque[bytes]]] = deque()
        self._conn: AbstractConnection | None = None
        self._opening: AbstractConnection | None = None
        self._task: asyncio.Task[None] | None = None
        self._lock: asyncio.Lock | None = None
        self._last_rx = 0.0
        self._ping_sent = False
        self.reconnects = 0
        """Connections re-established after a loss."""
        self.last_error: str | None = None
        """The most recent failure of the pub/sub connection (kept after it recovered)."""
        self.last_error_at = 0.0
        """When ``last_error`` happened (``time.monotonic()``)."""

    # -- lifecycle --------------------------------------------------------------------------

    async def start(self) -> None:
        """Connect once (raising if Redis is out of reach), then start the reader task."""
        self._lock = asyncio.Lock()
        try:
            conn = await self._open()
        except OUTAGE_ERRORS as exc:
            self.last_error, self.last_error_at = describe(exc), time.monotonic()
            raise BackendUnavailableError(
                f"cannot reach Redis for pub/sub within {self._timeout}s ({self.last_error}); "
                "check the URL and that the server is running"
            ) from exc
        self._conn = conn
        self._last_rx = time.monotonic()
        self._task = asyncio.create_task(self._run(conn), name="rtkit.redis.reader")
        self._task.add_done_callback(self._reader_ended)

    async def stop(self) -> None:
        """Cancel the reader, close the connection and fail every call still waiting."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            # asyncio.wait does not raise the task's CancelledError, so a cancellation of the
            # caller itself still comes through.
            await asyncio.wait([task])
        for conn in (self._conn, self._opening):
            if conn is not None:
                await self._close(conn)
        self._conn = self._opening = None
        stopped = NotStartedError("the Redis backend was shut down")
        waiters = [w for entries in self._expect.values() for p in entries for w in p.waiters]
        waiters += [w for ws in self._orphans.values() for w in ws]
        for waiter in waiters:
            if not waiter.done():
                waiter.set_exception(stopped)
        self._expect.clear()
        self._orphans.clear()
        self._wanted.clear()
        self._active.clear()
        self._resync.clear()

    def _reader_ended(self, task: asyncio.Task[None]) -> None:
        if not task.cancelled() and self._task is task:
            # _run only ends by cancellation; anything else is a bug, and must not be silent.
            logger.error("the Redis reader task ended unexpectedly", exc_info=task.exception())

    def state(self) -> SubscriberState:
        """``down`` without a working connection, ``resync`` while resubscribing, else ``up``.

        Computed from the time of the last byte received, so a blackhole shows as ``down``
        no later than ``ping_interval + timeout`` after the line went quiet.
        """
        if self._conn is None:
            return "down"
        if time.monotonic() - self._last_rx > self._ping_interval + self._timeout:
            return "down"
        return "resync" if self._resync else "up"

    # -- subscriptions ----------------------------------------------------------------------

    async def subscribe(self, key: bytes, channel: str) -> None:
        """Subscribe ``key``; returns once Redis confirmed it.

        Raises:
            BackendUnavailableError: no confirmation within ``timeout`` (Redis is out of reach).
        """
        lock = self._started()
        self._wanted[key] = channel
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        try:
            with anyio.fail_after(self._timeout):
                async with lock:
                    conn = self._conn
                    if conn is None or not conn.is_connected:
                        # The reader subscribes it, and wakes us, once it has reconnected.
                        self._orphans.setdefault(key, []).append(waiter)
                    else:
                        self._expect.setdefault(key, deque()).append(_Pending(_SUBSCRIBE, [waiter]))
                        # On failure the reader sees the loss and resubscribes after reconnecting.
                        with contextlib.suppress(*OUTAGE_ERRORS):
                            await self._send(conn, _SUBSCRIBE, [key])
                await waiter
        except BaseException as exc:
            # The caller is told the subscribe failed, so nothing may keep the key wanted: not
            # even a confirmation of an earlier attempt that arrived meanwhile. A confirmation
            # still to come is undone by the reader (see _handle).
            self._wanted.pop(key, None)
            self._resync.discard(key)
            # A subscribe that gave up while Redis was out of reach must not leave its waiter
            # behind: clients may retry as often as they like during a long outage.
            orphans = self._orphans.get(key)
            if orphans is not None and waiter in orphans:
                orphans.remove(waiter)
                if not orphans:
                    del self._orphans[key]
            if isinstance(exc, TimeoutError):
                raise BackendUnavailableError(
                    f"Redis did not confirm the subscription to {channel!r} within "
                    f"{self._timeout}s (last error: {self.last_error}); retry later"
                ) from exc
            raise

    async def unsubscribe(self, key: bytes) -> None:
        """Unsubscribe ``key``; returns once Redis confirmed, or at once if it is out of reach.

        Messages of ``key`` are dropped from the moment of the call either way.
        """
        lock = self._started()
        self._wanted.pop(key, None)
        self._resync.discard(key)
        if key not in self._active and key not in self._expect:
            return
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        with anyio.move_on_after(self._timeout):
            async with lock:
                conn = self._conn
                if conn is None or not conn.is_connected:
                    return  # the next connection will not subscribe it
                self._expect.setdefault(key, deque()).append(_Pending(_UNSUBSCRIBE, [waiter]))
                try:
                    await self._send(conn, _UNSUBSCRIBE, [key])
                except OUTAGE_ERRORS:
                    return
            await waiter

    async def _send(self, conn: AbstractConnection, kind: bytes, keys: list[bytes]) -> None:
        """Send ``kind`` (SUBSCRIBE, UNSUBSCRIBE or PING) for ``keys``; the caller holds the lock."""
        # Recorded first: the reader may read the answer while the send is still draining.
        self._sent.append((kind, deque(keys)))
        await conn.send_command(kind.decode().upper(), *keys, check_health=False)

    def _started(self) -> asyncio.Lock:
        if self._lock is None:
            raise NotStartedError("the Redis subscriber is not started")
        return self._lock

    # -- the reader -------------------------------------------------------------------------

    async def _open(self) -> AbstractConnection:
        conn = self._connect()
        self._opening = conn
        try:
            with anyio.fail_after(self._timeout):
                await conn.connect()  # type: ignore[no-untyped-call]
        except BaseException:
            # Also on cancellation: a half-open socket must not outlive the backend.
            self._opening = None
            await self._close(conn)
            raise
        self._opening = None
        return conn

    async def _close(self, conn: AbstractConnection) -> None:
        try:
            await conn.disconnect(nowait=True)
        except OUTAGE_ERRORS as exc:
            logger.debug("closing a Redis pub/sub connection failed: %s", describe(exc))

    async def _run(self, conn: AbstractConnection | None) -> None:
        attempt = 0
        while True:
            since = time.monotonic()
            try:
                if conn is None:
                    conn = await self._open()
                    self.reconnects += 1
                    logger.warning(
                        "reconnected to Redis (reconnect #%d); resubscribing %d channel(s)",
                        self.reconnects,
                        len(self._wanted),
                    )
                    self._on_reconnected()
                await self._serve(conn)
            except OUTAGE_ERRORS as exc:
                self._lost(exc)
            except Exception as exc:
                # The reader is the only way messages come in: a bug here must be loud, and
                # must not end delivery for good, so it is logged and the reader starts over.
                logger.exception("unexpected error in the Redis reader; reconnecting")
                self._lost(exc)
            if conn is not None:
                await self._close(conn)
                conn = None
            # A connection that held for a while resets the backoff; a flapping one does not.
            attempt = 0 if time.monotonic() - since > self._backoff_cap else attempt + 1
            delay = min(self._backoff_cap, self._backoff_first * 2 ** min(attempt, 30))
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))

    def _lost(self, exc: BaseException) -> None:
        self.last_error, self.last_error_at = describe(exc), time.monotonic()
        if self._conn is not None:
            logger.warning("Redis pub/sub connection lost (%s); reconnecting", self.last_error)
        else:
            logger.info("Redis still out of reach (%s); retrying", self.last_error)
        self._conn = None
        self._resync = (self._resync | self._active) & self._wanted.keys()
        self._active = set()
        self._sent.clear()
        for key, entries in self._expect.items():
            for pending in entries:
                if pending.kind == _SUBSCRIBE and key in self._wanted:
                    self._orphans.setdefault(key, []).extend(pending.waiters)
                else:
                    _resolve(pending.waiters)  # a new connection starts unsubscribed
        self._expect.clear()

    async def _serve(self, conn: AbstractConnection) -> None:
        self._conn = conn
        self._last_rx = time.monotonic()
        self._ping_sent = False
        await self._resubscribe(conn)
        limit = self._ping_interval + self._timeout
        while True:
            silent = time.monotonic() - self._last_rx
            if silent >= self._ping_interval and not self._ping_sent:
                self._ping_sent = True
                async with self._started():
                    await self._send(conn, _PING, [])
            wait = (limit if self._ping_sent else self._ping_interval) - silent
            response = await self._read(conn, max(wait, 0.001))
            if response is None:
                silent = time.monotonic() - self._last_rx
                if silent < limit:
                    continue
                # Judged only after reads found nothing: when the event loop itself was held
                # up, the read's deadline and Redis's answer come due together and the deadline
                # may win, so look at the buffer once more before calling the line dead.
                response = await self._read(conn, 0.01)
                if response is None:
                    raise TimeoutError(f"Redis sent nothing for {silent:.1f}s, not even a PONG")
            self._last_rx = time.monotonic()
            self._ping_sent = False
            if isinstance(response, ResponseError):
                self._refused(response)
            else:
                await self._handle(conn, response)

    @staticmethod
    async def _read(conn: AbstractConnection, wait: float) -> object:
        """The next reply, None if none came within ``wait`` seconds, or the error Redis answered.

        An error reply (a SUBSCRIBE that an ACL refuses, say) answers one command; the
        connection is fine, so it is returned rather than raised as an outage would be.
        """
        try:
            return await conn.read_response(timeout=wait)
        except ResponseError as exc:
            return exc

    def _refused(self, exc: ResponseError) -> None:
        """Redis answered the oldest command still waiting with an error: fail its callers."""
        self.last_error, self.last_error_at = describe(exc), time.monotonic()
        if not self._sent:
            logger.warning("Redis answered an error on the pub/sub connection: %s", self.last_error)
            return
        kind, keys = self._sent.popleft()
        names = [self._wanted.get(key, key.decode(errors="replace")) for key in keys]
        logger.error("Redis refused %s of %s: %s", kind.decode().upper(), names, self.last_error)
        error = BackendError(f"Redis refused to {kind.decode()} {names}: {self.last_error}")
        for key in keys:
            entries = self._expect.get(key)
            if not entries:
                continue
            pending = entries.popleft()
            if not entries:
                del self._expect[key]
            if kind == _SUBSCRIBE:
                for waiter in pending.waiters:
                    if not waiter.done():
                        waiter.set_exception(error)
            else:
                _resolve(pending.waiters)  # not subscribed either way

    async def _resubscribe(self, conn: AbstractConnection) -> None:
        async with self._started():
            keys = list(self._wanted)
            for key in keys:
                waiters = self._orphans.pop(key, [])
                self._expect.setdefault(key, deque()).append(_Pending(_SUBSCRIBE, waiters))
            for waiters in self._orphans.values():
                _resolve(waiters)  # unsubscribed meanwhile
            self._orphans.clear()
            for start in range(0, len(keys), _RESUBSCRIBE_CHUNK):
                await self._send(conn, _SUBSCRIBE, keys[start : start + _RESUBSCRIBE_CHUNK])

    def _answered(self, kind: bytes, key: bytes | None) -> None:
        """One more answer to the oldest command: for ``key``, or a PONG (``key`` None)."""
        if not self._sent:
            return
        head_kind, keys = self._sent[0]
        if head_kind != kind:
            return  # not the answer this record expects; nothing to pair
        if key is not None and keys and keys[0] == key:
            keys.popleft()
        if not keys:
            self._sent.popleft()

    async def _handle(self, conn: AbstractConnection, response: object) -> None:
        if not isinstance(response, list) or len(response) != 3:
            # A PONG: [b"pong", b""] in subscribed mode, b"PONG" outside it.
            self._answered(_PING, None)
            return
        kind, key, value = response
        if kind == _MESSAGE:
            channel = self._wanted.get(key)
            if channel is not None:
                self._on_message(channel, value)
            elif key in self._active and key not in self._expect:
                # Subscribed at Redis, wanted by no one, and no UNSUBSCRIBE on its way (an
                # unsubscribe that could not get the connection in time): undo it now, or Redis
                # would send its messages until the next reconnect.
                async with self._started():
                    self._expect.setdefault(key, deque()).append(_Pending(_UNSUBSCRIBE, []))
                    await self._send(conn, _UNSUBSCRIBE, [key])
            return
        if kind in (_SUBSCRIBE, _UNSUBSCRIBE):
            self._answered(kind, key)
            entries = self._expect.get(key)
            if entries:
                _resolve(entries.popleft().waiters)
                if not entries:
                    del self._expect[key]
            if kind == _UNSUBSCRIBE:
                self._active.discard(key)
            elif key in self._wanted:
                self._active.add(key)
                if key in self._resync:
                    self._resync.discard(key)
                    self._on_resubscribed(self._wanted[key])
            elif key not in self._expect:
                # A subscribe that gave up (timeout, cancel) was confirmed after all: undo it.
                async with self._started():
                    self._expect.setdefault(key, deque()).append(_Pending(_UNSUBSCRIBE, []))
                    await self._send(conn, _UNSUBSCRIBE, [key])
