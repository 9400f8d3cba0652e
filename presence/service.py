"""The presence service of one process: Redis, the background workers, local state."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from types import TracebackType

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .connection import BLOCK_MS, Redis, check_version, open_redis, text, wait_for_redis
from .consumer import HeartbeatConsumer
from .contract import ID_RULE, is_valid_id
from .errors import InvalidClientId, RedisMisconfigured, RedisUnavailable
from .events import OnlineClient, PresenceEvent
from .expiry import KeyspaceListener, Sweeper
from .fanout import PresenceReader
from .local import CloseReason, LocalState, Subscriber
from .publisher import HeartbeatPublisher
from .replay import Replay, Replayer
from .settings import Settings
from .snapshot import Snapshot, SnapshotReader
from .supervise import MAX_BACKOFF, Outage, Worker
from .transitions import Transitions

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0


class Presence:
    """Presence for one process: start it, then mark clients online and watch changes.

    >>> async with Presence(Settings()) as presence:
    ...     async with presence.track("alice"):
    ...         ...  # alice is online while this block runs

    Closing stops heartbeating this process's clients without publishing
    OFFLINE for them: they may reconnect to another server, and their keys
    expire otherwise.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self.settings = settings or Settings()
        self.local = LocalState(self.settings.queue_size, self.settings.leave_grace)
        self._redis: Redis | None = None
        self._workers: list[Worker] = []
        self._snapshots: SnapshotReader | None = None
        self._replayer: Replayer | None = None
        self.outage = Outage()

    @property
    def started(self) -> bool:
        return self._redis is not None

    @property
    def recoveries(self) -> int:
        """How many times a worker recovered after a failure."""
        return sum(w.recoveries for w in self._workers)

    @property
    def redis(self) -> Redis:
        if self._redis is None:
            raise RuntimeError("presence is not started")
        return self._redis

    async def start(self) -> None:
        """Connect to Redis and start the workers; raises ``PresenceError`` subclasses."""
        if self._redis is not None:
            raise RuntimeError("presence is already started")
        settings = self.settings
        redis = open_redis(settings)
        try:
            await wait_for_redis(redis, settings)
            await check_version(redis, settings)
            transitions = Transitions(redis, settings)
            await transitions.load()
            consumer = HeartbeatConsumer(redis, settings, transitions)
            await consumer.ensure_group()  # fails fast on a key of the wrong type
            reader = PresenceReader(redis, settings, self.local)
            await reader.start()
            listener = KeyspaceListener(redis, settings, transitions)
            await listener.start()
        except BaseException as exc:
            await redis.aclose()
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise RedisUnavailable(f"lost Redis while starting: {exc}") from None
            if isinstance(exc, RedisError):
                raise RedisMisconfigured(f"Redis refused a start-up command: {exc}") from None
            raise
        self._redis = redis
        self._snapshots = SnapshotReader(transitions)
        self._replayer = Replayer(redis, settings.keys.presence, settings.queue_size)
        self.consumer = consumer
        self.sweeper = Sweeper(transitions, grace=settings.heartbeat_interval)
        self.listener = listener
        self.publisher = HeartbeatPublisher(redis, settings, self.local, transitions)
        self.reader = reader
        # Loops blocked in a Redis read get one block's time to end by themselves.
        grace = BLOCK_MS / 1000 + 0.5
        # Retrying at least twice an interval keeps recovery within two intervals.
        backoff = min(MAX_BACKOFF, settings.heartbeat_interval / 2)
        loops: list[tuple[str, Callable[[Worker], Awaitable[None]], float]] = [
            ("heartbeat publisher", self.publisher.run, 0),  # first: close() relies on it
            ("heartbeat consumer", self.consumer.run, grace),
            ("deadline sweeper", self.sweeper.run, 0),
            ("keyspace listener", self.listener.run, grace),
            ("presence reader", reader.run, grace),
            ("snapshot reader", self._snapshots.run, 0),
        ]
        for name, loop, stop_grace in loops:
            worker = Worker(name, stop_grace, self.outage, backoff)
            worker.start(loop)
            self._workers.append(worker)

    async def close(self) -> None:
        """Close every subscriber, stop the workers (publisher first), close Redis."""
        self.local.close_all("shutdown")
        workers, self._workers = self._workers, []
        if workers:
            # The publisher first: no heartbeat leaves after close() begins.
            await workers[0].stop()
            await asyncio.gather(*(w.stop() for w in workers[1:]))
        if self._redis is not None:
            await self._redis.aclose()
            self._redis = None

    async def __aenter__(self) -> Presence:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def track(self, client_id: str) -> AsyncIterator[None]:
        """Keep ``client_id`` online, heartbeated by this server, while the block runs."""
        _check_id(client_id)
        self.local.hold(client_id)
        try:
            yield
        finally:
            self.local.release(client_id)

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[PresenceEvent]]:
        """Presence events from now on, in stream order.

        >>> async with presence.changes() as events:
        ...     async for event in events:
        ...         print(event.client, event.status)

        A listener that falls ``queue_size`` events behind is stopped.
        """
        subscriber = Subscriber(self.local, None)

        async def events() -> AsyncIterator[PresenceEvent]:
            while batch := await subscriber.get_many():
                for delivery in batch:
                    yield delivery.event

        with self.local.subscribed(subscriber):
            yield events()

    @asynccontextmanager
    async def connect(
        self,
        client_id: str,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
    ) -> AsyncIterator[Subscriber]:
        """Hold ``client_id`` online and subscribe it to everyone else's events.

        ``alive`` tells whether the underlying connection is still open (checked
        every heartbeat tick); ``abort`` drops it when its reader falls behind.
        """
        _check_id(client_id)
        self.local.hold(client_id)

        def closed(reason: CloseReason) -> None:
            self.local.release(client_id, leave=reason != "shutdown")
            if reason == "overflow" and abort is not None:
                abort()

        subscriber = Subscriber(self.local, client_id, alive=alive, on_close=closed)
        with self.local.subscribed(subscriber):
            yield subscriber

    async def snapshot(self) -> Snapshot:
        """Who is online, with the presence stream position it is exact at."""
        if self._snapshots is None:
            raise RuntimeError("presence is not started")
        return await self._snapshots.get()

    async def replay(self, after: str) -> Replay | None:
        """The presence entries after stream entry ``after``, for a resuming
        connection; None when they cannot be exact (the entry is gone or
        unknown, or more than ``queue_size`` came after it)."""
        if self._replayer is None:
            raise RuntimeError("presence is not started")
        return await self._replayer.after(after)

    async def online(self) -> list[OnlineClient]:
        """Every online client, on any server."""
        flat = await self.redis.hgetall(self.settings.keys.servers)
        return sorted(
            (OnlineClient(text(c), text(s)) for c, s in flat.items()),
            key=lambda o: o.client,
        )

    async def status(self, client_id: str) -> OnlineClient | None:
        """The client and its server when it is online, else None."""
        _check_id(client_id)
        server = await self.redis.hget(self.settings.keys.servers, client_id)
        return None if server is None else OnlineClient(client_id, text(server))

    async def problems(self) -> list[str]:
        """Why this process is unhealthy; empty when Redis answers and every worker runs."""
        found = [p for w in self._workers if (p := w.problem) is not None]
        if not self._workers:
            found.append("presence is not started")
            return found
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                await self.redis.ping()
        except Exception as exc:
            found.insert(0, f"redis: {type(exc).__name__}: {exc}".rstrip(": "))
        return found


def _check_id(client_id: str) -> None:
    if not is_valid_id(client_id):
        raise InvalidClientId(ID_RULE)
