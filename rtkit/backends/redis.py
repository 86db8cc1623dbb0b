"""The Redis backend: fan-out across processes and machines, on ``redis.asyncio`` (asyncio only).

Delivery guarantee, stated plainly: messages travel over Redis pub/sub, which is **at most once**.
Redis keeps nothing for a subscriber that is not connected, and drops a subscriber that reads
too slowly. So this backend does not promise that every message arrives; it promises that a loss
does not go unnoticed:

- every message carries a small header (see ``_redis_wire``): a publisher id, drawn when a
  backend starts publishing on a channel, and a sequence number counted on that channel. The
  receiving side tracks the last number per (publisher, channel); a jump calls
  ``receiver.gap(channel, missed)`` with the exact count, before the message that revealed it is
  delivered, and a number already seen is a duplicate, dropped (redis-py resends a command whose
  connection broke before the answer came, though Redis may have run it);
- a publish that fails has spent its number: if it never reached Redis, subscribers report it
  as a loss of one; if it did, they got it, and nothing is reported;
- a reconnect of the pub/sub connection may have lost messages that no later message will ever
  reveal (the publisher may say nothing more), so once each channel is subscribed again it gets
  ``receiver.gap(channel, 1)``: "at least one message may be lost", an estimate;
- order is kept per publisher and channel: concurrent ``publish`` calls of one backend on one
  channel go out one after another, in call order. Messages of different publishers interleave.

The bytes handed to ``publish`` come back out of ``deliver`` byte for byte (the header is
stripped); a message on our channels without our header is dropped and logged.

Outages: ``publish``, ``join``, ``leave`` and ``members`` give up after ``timeout`` seconds and
raise ``BackendUnavailableError`` (an HTTP handler can answer 503); nothing ever blocks the event
loop. The pub/sub reader reconnects on its own, forever, with exponential backoff from
0.1 s doubling to a 2 s cap, each delay scaled by a random 50-100 % so that a fleet of processes
does not reconnect in lockstep. Each reconnect is logged (logger ``rtkit.redis``) and counted in
``health().reconnects``. The reader pings Redis after ``ping_interval`` seconds of silence, so a
connection that is open but carries nothing (a blackhole) shows as ``down`` in ``health()`` at
most ``ping_interval + timeout`` seconds (2 s by default) after the last byte arrived.

Presence: see ``_redis_presence``. Entries of a process that vanished expire after
``presence_ttl`` seconds (30 by default); live processes refresh theirs every ``presence_ttl / 3``,
and at once after a reconnect (a restarted Redis without persistence forgot them: they come back
at the end of the join order).

Names in Redis: channel ``c`` is the pub/sub channel ``{prefix}:{c}``; presence group ``g`` uses
the keys ``{prefix}:presence:{g}:*``. Backends with the same prefix on the same Redis share
everything; give each application its own prefix.
"""

from __future__ import annotations

import asyncio
import logging
import secrets
from urllib.parse import urlsplit

try:
    import redis.asyncio as aioredis
except ImportError as exc:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "RedisBackend needs the redis package, an optional extra of rtkit: pip install 'rtkit[redis]'"
    ) from exc

from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from rtkit.backends._redis_commands import CommandGuard
from rtkit.backends._redis_presence import Presence, PresenceKeeper
from rtkit.backends._redis_subscriber import Subscriber, connection_factory
from rtkit.backends._redis_wire import DUPLICATE, PUBLISHER_ID_SIZE, SequenceTracker, pack, unpack
from rtkit.backends.base import Backend, BackendHealth, HealthState, Receiver
from rtkit.errors import ConfigurationError, NotStartedError

__all__ = ["RedisBackend"]

logger = logging.getLogger("rtkit.redis")

_BACKOFF = (0.1, 2.0)  # first reconnect delay and cap, in seconds
_SCHEMES = ("redis", "rediss", "unix")
_MAX_OUTGOING = 10_000  # channels whose publish sequence is remembered (oldest forgotten first)


class _Outgoing:
    """The publishing state of one channel: its publisher id, its sequence and the lock that
    keeps it in order.

    The id is drawn afresh for each new state: a channel whose state was forgotten (see
    ``_forget_oldest_channel``) starts a new count under a new id, which receivers cannot take
    for duplicates of the old one.
    """

    __slots__ = ("lock", "publisher", "seq")

    def __init__(self) -> None:
        self.lock = asyncio.Lock()
        self.publisher = secrets.token_bytes(PUBLISHER_ID_SIZE)
        self.seq = 0


class RedisBackend(Backend):
    """Moves bytes between processes and machines through Redis pub/sub (asyncio only).

    Args:
        url: where Redis is, e.g. ``"redis://127.0.0.1:6379/0"`` (``rediss://`` for TLS,
            ``unix://`` for a socket). To configure the client yourself, use ``from_client``.
        prefix: namespace of every channel and key this backend uses in Redis.
        timeout: seconds a publish, a presence call, a connect or a subscription may take
            before Redis counts as out of reach.
        ping_interval: seconds of silence on the pub/sub connection before it is pinged; a
            blackhole is detected within ``ping_interval + timeout``.
        presence_ttl: seconds after which the presence entries of a process that vanished
            without ``shutdown`` disappear.

    Raises:
        ConfigurationError: a value that cannot work (unknown URL scheme, a non-positive time).

    Nothing touches the network or the event loop until ``startup``. It runs on asyncio
    only (``redis.asyncio``); starting it under trio raises ``ConfigurationError``.
    """

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "rtkit",
        timeout: float = 1.0,
        ping_interval: float = 1.0,
        presence_ttl: float = 30.0,
    ) -> None:
        if urlsplit(url).scheme not in _SCHEMES:
            raise ConfigurationError(f"RedisBackend needs a redis://, rediss:// or unix:// URL, got {url!r}")
        self._configure(url, None, prefix, timeout, ping_interval, presence_ttl)

    @classmethod
    def from_client(
        cls,
        client: aioredis.Redis,
        *,
        prefix: str = "rtkit",
        timeout: float = 1.0,
        ping_interval: float = 1.0,
        presence_ttl: float = 30.0,
    ) -> RedisBackend:
        """A backend on a ``redis.asyncio.Redis`` client you configured (TLS, auth, pool...).

        The client stays yours: ``shutdown`` does not close it. Publishes and presence calls
        use its pool; the pub/sub connection is a separate one the backend opens with the
        client's connection settings (RESP2, and ``timeout`` for connects) and closes itself.
        Other arguments as for the constructor.
        """
        if not isinstance(client, aioredis.Redis):
            raise ConfigurationError(
                f"from_client needs a redis.asyncio.Redis client, got {type(client).__name__}"
            )
        backend = cls.__new__(cls)
        backend._configure(None, client, prefix, timeout, ping_interval, presence_ttl)
        return backend

    def _configure(
        self,
        url: str | None,
        client: aioredis.Redis | None,
        prefix: str,
        timeout: float,
        ping_interval: float,
        presence_ttl: float,
    ) -> None:
        if not prefix:
            raise ConfigurationError("RedisBackend needs a non-empty prefix")
        for name, value in (
            ("timeout", timeout),
            ("ping_interval", ping_interval),
            ("presence_ttl", presence_ttl),
        ):
            if not value > 0:
                raise ConfigurationError(f"RedisBackend's {name} must be positive, got {value!r}")
        self._url = url
        self._user_client = client
        self._prefix = prefix
        self._timeout = float(timeout)
        self._ping_interval = float(ping_interval)
        self._presence_ttl = float(presence_ttl)
        self._guard = CommandGuard(self._timeout, window=self._ping_interval + self._timeout)
        self._receiver: Receiver | None = None
        self._client: aioredis.Redis | None = None
        self._subscriber: Subscriber | None = None
        self._presence: PresenceKeeper | None = None
        self._outgoing: dict[str, _Outgoing] = {}
        self._tracker = SequenceTracker()
        self._reconnects = 0  # of subscribers of earlier starts
        self._stopped_error: str | None = None

    # -- lifecycle --------------------------------------------------------------------------

    def _started(self) -> tuple[aioredis.Redis, Subscriber, PresenceKeeper]:
        client, subscriber, presence = self._client, self._subscriber, self._presence
        if self._receiver is None or client is None or subscriber is None or presence is None:
            raise NotStartedError(
                "RedisBackend is not started: start its Hub first (`await hub.startup()`, "
                "`async with hub:`, or the lifespan of RealtimeRouter)."
            )
        return client, subscriber, presence

    async def startup(self, receiver: Receiver) -> None:
        """Connect the pub/sub connection; start the reader and the presence heartbeat.

        Raises:
            ConfigurationError: not running on asyncio (e.g. under trio).
            BackendUnavailableError: Redis could not be reached within ``timeout``. Once
                started, the backend rides out outages on its own.
        """
        if self._receiver is not None:
            return
        try:
            asyncio.get_running_loop()
        except RuntimeError:
            raise ConfigurationError(
                "RedisBackend runs on asyncio only (it is built on redis.asyncio): run the app "
                "on asyncio, or use MemoryBackend under trio"
            ) from None
        client = self._user_client or self._make_client()
        subscriber = Subscriber(
            connection_factory(client, self._timeout),
            on_message=self._on_message,
            on_resubscribed=self._on_resubscribed,
            on_reconnected=self._on_reconnected,
            timeout=self._timeout,
            ping_interval=self._ping_interval,
            backoff=_BACKOFF,
        )
        self._receiver = receiver
        try:
            await subscriber.start()
        except BaseException:
            self._receiver = None
            if client is not self._user_client:
                await client.aclose()
            raise
        self._client, self._subscriber = client, subscriber
        self._presence = PresenceKeeper(
            Presence(client, self._prefix, self._presence_ttl),
            self._guard,
            ttl=self._presence_ttl,
            timeout=self._timeout,
        )

    async def shutdown(self) -> None:
        """Stop the tasks, remove this process's presence entries, close what it opened.

        A client passed to ``from_client`` is left open: its owner closes it. Safe to call
        twice, and before ``startup``.
        """
        if self._receiver is None:
            return
        self._receiver = None
        presence, self._presence = self._presence, None
        if presence is not None:
            await presence.stop()
        subscriber, self._subscriber = self._subscriber, None
        if subscriber is not None:
            self._reconnects += subscriber.reconnects
            self._stopped_error = subscriber.last_error or "shut down"
            await subscriber.stop()
        client, self._client = self._client, None
        if client is not None and client is not self._user_client:
            await client.aclose()
        self._outgoing.clear()
        self._tracker.clear()

    def _make_client(self) -> aioredis.Redis:
        # One retry without delay covers a pooled connection that died with the server;
        # anything longer would break the promise to fail within `timeout`.
        return aioredis.Redis.from_url(
            str(self._url),
            socket_timeout=self._timeout,
            socket_connect_timeout=self._timeout,
            retry=Retry(NoBackoff(), 1),
        )

    # -- messages ---------------------------------------------------------------------------

    def _channel_key(self, channel: str) -> str:
        return f"{self._prefix}:{channel}"

    async def publish(self, channel: str, data: bytes) -> None:
        """Send ``data`` to every subscriber of ``channel`` in every process.

        Raises:
            NotStartedError: before ``startup``.
            BackendUnavailableError: Redis did not take it within ``timeout``.
            BackendError: Redis refused the command.
        """
        client, _, _ = self._started()
        outgoing = self._outgoing.get(channel)
        if outgoing is None:
            outgoing = self._outgoing[channel] = _Outgoing()
            if len(self._outgoing) > _MAX_OUTGOING:
                self._forget_oldest_channel()
        async with self._guard(f"publish to {channel!r}"), outgoing.lock:
            # The number is spent before the send: a resend of the same bytes is then a
            # duplicate that receivers drop, and a publish that never reached Redis leaves a
            # hole that they report as the loss it is for them.
            seq = outgoing.seq = outgoing.seq + 1
            await client.publish(self._channel_key(channel), pack(outgoing.publisher, seq, data))

    def _forget_oldest_channel(self) -> None:
        # Memory stays bounded however many channels a process publishes to. A forgotten
        # channel counts from 1 again, under a new publisher id (see _Outgoing).
        for channel, outgoing in self._outgoing.items():
            if not outgoing.lock.locked():
                del self._outgoing[channel]
                return

    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``; returns once Redis confirmed the subscription.

        Raises:
            NotStartedError: before ``startup``.
            BackendUnavailableError: no confirmation within ``timeout``.
        """
        _, subscriber, _ = self._started()
        await subscriber.subscribe(self._channel_key(channel).encode(), channel)

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel`` at once; returns when Redis confirmed (or is out of reach)."""
        _, subscriber, _ = self._started()
        self._tracker.forget(channel)
        await subscriber.unsubscribe(self._channel_key(channel).encode())

    def _on_message(self, channel: str, message: bytes) -> None:
        receiver = self._receiver
        if receiver is None:
            return
        parsed = unpack(message)
        if parsed is None:
            logger.warning("dropped a message without rtkit's header on channel %r", channel)
            return
        publisher, seq, data = parsed
        missed = self._tracker.check(channel, publisher, seq)
        if missed == DUPLICATE:
            logger.debug(
                "dropped a duplicate (publisher %s, #%d) on channel %r", publisher.hex(), seq, channel
            )
            return
        # The reader calls this for every message: a receiver that raises must cost that one
        # message, not the connection and every message in flight with it.
        if missed:
            logger.warning("lost %d message(s) on channel %r", missed, channel)
            try:
                receiver.gap(channel, missed)
            except Exception:
                logger.exception("the receiver failed on a gap notice of channel %r", channel)
        # Apart from the gap notice: the message that revealed the loss is still delivered.
        try:
            receiver.deliver(channel, data)
        except Exception:
            logger.exception("the receiver failed on a message of channel %r", channel)

    def _on_resubscribed(self, channel: str) -> None:
        # The estimate stands for whatever the outage cost: later messages start a new count
        # rather than report the same loss twice.
        self._tracker.forget(channel)
        receiver = self._receiver
        if receiver is None:
            return
        try:
            receiver.gap(channel, 1)
        except Exception:
            logger.exception("the receiver failed on a gap notice of channel %r", channel)

    def _on_reconnected(self) -> None:
        if self._presence is not None:
            self._presence.wake()  # a restarted Redis has forgotten this process's members

    # -- presence ---------------------------------------------------------------------------

    async def join(self, group: str, member: str, name: str) -> None:
        """Record ``member`` in ``group`` under ``name``, for every process to see.

        Raises:
            BackendUnavailableError: Redis did not answer within ``timeout``.
        """
        await self._started()[2].join(group, member, name)

    async def leave(self, group: str, member: str) -> None:
        """Remove ``member`` from ``group``; unknown members are ignored.

        Raises:
            BackendUnavailableError: Redis did not answer within ``timeout`` (the entry then
                expires after ``presence_ttl``).
        """
        await self._started()[2].leave(group, member)

    async def members(self, group: str) -> list[str]:
        """The names present in ``group`` across all processes, in join order; never expired ones.

        Raises:
            BackendUnavailableError: Redis did not answer within ``timeout``.
        """
        return await self._started()[2].members(group)

    # -- health -----------------------------------------------------------------------------

    def health(self) -> BackendHealth:
        """Health now.

        ``down`` while the pub/sub connection is lost, unresponsive (no byte for
        ``ping_interval + timeout`` seconds) or not started; ``degraded`` while channels are
        being resubscribed after a reconnect, or when a publish or presence call failed in
        the last ``ping_interval + timeout`` seconds with no success since; else ``up``.
        ``last_error`` is the most recent failure, kept after recovery; ``reconnects`` counts
        the pub/sub reconnects since the backend was created.
        """
        subscriber = self._subscriber
        guard = self._guard
        if subscriber is None:
            return BackendHealth(
                state="down",
                last_error=self._stopped_error or "not started",
                reconnects=self._reconnects,
            )
        sub_state = subscriber.state()
        state: HealthState = "up"
        if sub_state == "down":
            state = "down"
        elif sub_state == "resync" or guard.failing():
            state = "degraded"
        last_error = subscriber.last_error
        if guard.last_error is not None and guard.last_error_at >= subscriber.last_error_at:
            last_error = guard.last_error
        return BackendHealth(
            state=state,
            last_error=last_error,
            reconnects=self._reconnects + subscriber.reconnects,
        )
