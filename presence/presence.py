"""``Presence``: one process's part of the service, the stages wired together.

Heartbeats in (``heartbeats``), transitions in Lua (``transitions``), presence
out (``updates``); ``web`` serves it over HTTP. Holding a client online and
subscribing to others are separate calls: a connection that cannot start
(Redis unreachable) holds nothing, so it leaves nothing to announce.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager, contextmanager
from dataclasses import dataclass
from types import TracebackType
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import ID_RULE, is_valid_id
from .errors import InvalidClientId, RedisMisconfigured, RedisUnavailable
from .events import OnlineClient, PresenceEvent, Reset
from .heartbeats.claims import Claimer
from .heartbeats.consumer import HeartbeatConsumer
from .heartbeats.held import HeldClients
from .heartbeats.publisher import HeartbeatPublisher
from .redis_client import BLOCK_MS, Redis, check_version, open_redis, wait_for_redis
from .settings import Settings
from .supervise import MAX_BACKOFF, UNREACHABLE, Outage, Worker
from .transitions.keyspace import KeyspaceListener
from .transitions.scripts import Transitions
from .transitions.sweeper import Sweeper
from .updates.deliveries import DeliveryLog, Resync, Subscriber
from .updates.occupancy import OccupancyPoller
from .updates.reader import PresenceReader
from .updates.replay import Replay, Replayer, RoomReplay
from .updates.room_reader import RoomReader
from .updates.room_snapshot import RoomSnapshot, RoomSnapshotReader
from .updates.scoped import Scope, ScopedSubscriber, Scopes
from .updates.scoped_start import ScopedSources
from .updates.snapshot import Snapshot, SnapshotReader
from .wire import member_data, stream_position, text

log = logging.getLogger(__name__)

HEALTH_TIMEOUT = 2.0
#: Seconds one attempt at a ``changes()`` listener's reset snapshot may take.
RESET_TIMEOUT = 10.0
#: Events a scoped stream may fall behind before it gets a fresh snapshot
#: (its queue holds references to shared deliveries).
SCOPED_QUEUE = 1024


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
        #: The clients this process holds online.
        self.held = HeldClients(self.settings.leave_grace)
        #: The subscribers of this process and their deliveries.
        self.deliveries = DeliveryLog(self.settings.queue_size, self.settings.stall_timeout)
        #: The scoped subscribers of this process, by room and watched id.
        self.scopes = Scopes()
        # Set once closing begins: a client released after it leaves no leave.
        self._closing = False
        self._redis: Redis | None = None
        self._workers: list[Worker] = []
        self._snapshots: SnapshotReader | None = None
        self._replayer: Replayer | None = None
        self._room_snapshots: RoomSnapshotReader | None = None
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
            reader = PresenceReader(redis, settings, self.deliveries, self.scopes)
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
        self._replayer = Replayer(redis, settings.keys, settings.queue_size)
        self._room_snapshots = RoomSnapshotReader(transitions)
        self._transitions = transitions
        self.room_reader = RoomReader(redis, settings, self.scopes)
        self.occupancy = OccupancyPoller(redis, settings.keys, self.scopes)
        #: What scoped streams start from.
        self.scoped_sources = ScopedSources(
            self.room_reader, self._room_snapshots, self._replayer, transitions, self.occupancy
        )
        self.consumer = consumer
        self.claimer = Claimer(settings, transitions, consumer)
        self.sweeper = Sweeper(transitions, grace=settings.heartbeat_interval)
        self.listener = listener
        self.publisher = HeartbeatPublisher(settings, self.held, transitions, self.outage)
        self.reader = reader
        # Loops blocked in a Redis read get one block's time to end by themselves.
        grace = BLOCK_MS / 1000 + 0.5
        # Retrying at least twice an interval keeps recovery within two intervals.
        backoff = min(MAX_BACKOFF, settings.heartbeat_interval / 2)
        loops: list[tuple[str, Callable[[Worker], Awaitable[None]], float]] = [
            ("heartbeat publisher", self.publisher.run, 0),  # first: close() relies on it
            ("heartbeat consumer", self.consumer.run, grace),
            ("heartbeat claimer", self.claimer.run, 0),
            ("deadline sweeper", self.sweeper.run, 0),
            ("keyspace listener", self.listener.run, grace),
            ("presence reader", reader.run, grace),
            ("fan-out", self.deliveries.fan_out, 0),
            ("snapshot reader", self._snapshots.run, 0),
            ("room reader", self.room_reader.run, grace),
            ("room snapshot reader", self._room_snapshots.run, 0),
            ("occupancy counter", self.occupancy.run, 0),
            ("connection pruner", self.deliveries.prune_closed, 0),
        ]
        for name, loop, stop_grace in loops:
            worker = Worker(name, stop_grace, self.outage, backoff)
            worker.start(loop)
            self._workers.append(worker)

    async def close(self) -> None:
        """Close every subscriber, stop the workers (publisher first), close Redis."""
        self.close_streams()
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

    def close_streams(self) -> None:
        """End every subscription, as at shutdown: their clients get no leave.

        They may be reconnecting to another server; the TTL decides.
        """
        self._closing = True
        self.deliveries.close_all("shutdown")

    @contextmanager
    def held_online(
        self, client_id: str, rooms: Sequence[str] = (), data: str | None = None
    ) -> Iterator[None]:
        """Keep ``client_id`` online, and a member of ``rooms``, heartbeated by
        this server while the block runs; ``data`` (canonical JSON, see
        ``wire.member_data``) becomes its data in those rooms.

        After the block, once no other block holds the client (in a room) here
        and the leave grace has passed, this server announces that it left
        (OFFLINE unless another server holds it).
        """
        _check_id(client_id)
        for room in rooms:
            _check_id(room)
        self.held.hold(client_id)
        for room in rooms:
            self.held.hold(client_id, room, data)
        try:
            yield
        finally:
            leave = not self._closing
            for room in rooms:
                self.held.release(client_id, room, leave=leave)
            self.held.release(client_id, leave=leave)

    @asynccontextmanager
    async def track(
        self, client_id: str, rooms: Sequence[str] = (), data: dict[str, Any] | None = None
    ) -> AsyncIterator[None]:
        """Keep ``client_id`` online, and a member of ``rooms`` with ``data``,
        heartbeated by this server while the block runs.

        Raises ``InvalidClientId`` for an invalid id or room, ``ValueError`` for
        data that is not a JSON object of at most 1 KB.
        """
        encoded = None if data is None else _encoded(data)
        with self.held_online(client_id, rooms, encoded):
            yield

    @asynccontextmanager
    async def changes(self) -> AsyncIterator[AsyncIterator[PresenceEvent | Reset]]:
        """Presence events from now on, in stream order.

        >>> async with presence.changes() as events:
        ...     async for event in events:
        ...         print(event)

        When this listener may have missed entries (the presence stream lost
        some: trimmed, or Redis restarted without its data; or it fell
        ``queue_size`` events behind), a ``Reset`` comes instead, with
        everyone online; events go on after it. While Redis cannot give that
        snapshot, it is retried with backoff, as the workers retry; the
        iteration ends if the service closes meanwhile.
        """
        subscriber = Subscriber(self.deliveries, None)

        async def events() -> AsyncIterator[PresenceEvent | Reset]:
            after: tuple[int, int] | None = None
            while True:
                try:
                    batch = await subscriber.get_many()
                except Resync:
                    snapshot = await self._fresh_snapshot(subscriber)
                    if snapshot is None:
                        return  # closed while Redis was away
                    after = stream_position(snapshot.position)
                    yield Reset(snapshot.position, snapshot.clients)
                    continue
                if not batch:
                    return
                for delivery in batch:
                    if after is not None and stream_position(delivery.id) <= after:
                        continue  # in the reset already
                    after = None
                    yield delivery.event

        with self.deliveries.subscribed(subscriber):
            yield events()

    async def _fresh_snapshot(self, subscriber: Subscriber) -> Snapshot | None:
        """A snapshot for a ``changes()`` listener's reset, retried with the
        workers' backoff until Redis gives it; None once the listener is closed.

        An embedder's iterator never raises a Redis error: it waits, as an SSE
        client would reconnect.
        """
        backoff, failing = 0.1, False
        cap = min(MAX_BACKOFF, self.settings.heartbeat_interval / 2)
        while subscriber.reason is None:
            try:
                # Bounded: a snapshot asked for as the service closes is never answered.
                async with asyncio.timeout(RESET_TIMEOUT):
                    return await self.snapshot()
            except (TimeoutError, RedisError, OSError) as exc:
                if not failing:
                    # An unreachable Redis is the outage's line, which the workers log.
                    unreachable = isinstance(exc, (TimeoutError, *UNREACHABLE))
                    log.log(
                        logging.DEBUG if unreachable else logging.WARNING,
                        "no fresh snapshot for a changes() listener: %s: %s; retrying with backoff",
                        type(exc).__name__,
                        exc,
                    )
                failing = True
            if await subscriber.closed_within(backoff):
                break
            backoff = min(backoff * 2, cap)
        return None

    @contextmanager
    def subscribed(
        self,
        client_id: str,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> Iterator[Subscriber]:
        """Subscribe a connection of ``client_id`` to everyone else's events.

        ``alive`` tells whether the underlying connection is still open (a
        closed one is dropped within ``PRUNE_INTERVAL``); ``abort`` drops the
        connection when its reader falls behind and stops reading, which
        ``buffered`` (the bytes not yet sent) tells.
        """
        _check_id(client_id)
        subscriber = Subscriber(
            self.deliveries, client_id, alive=alive, abort=abort, buffered=buffered
        )
        with self.deliveries.subscribed(subscriber):
            yield subscriber

    @contextmanager
    def scoped(
        self,
        client_id: str,
        scope: Scope,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> Iterator[ScopedSubscriber]:
        """Subscribe a connection of ``client_id`` to what ``scope`` covers (see
        ``subscribed``); its events queue up from now on."""
        _check_id(client_id)
        limit = min(self.settings.queue_size, SCOPED_QUEUE)
        subscriber = ScopedSubscriber(
            client_id, scope, limit, alive=alive, abort=abort, buffered=buffered
        )
        with self.deliveries.subscribed(subscriber), self.scopes.subscribed(subscriber):
            yield subscriber

    async def room_snapshots(self, rooms: Sequence[str]) -> dict[str, RoomSnapshot]:
        """Each room's members, with the room stream position they are exact at;
        ``RoomUnreadable`` for the first of them Redis fails to read."""
        if self._room_snapshots is None:
            raise RuntimeError("presence is not started")
        return await self._room_snapshots.get(rooms)

    async def room(self, room: str) -> RoomSnapshot:
        """The members of ``room``, on any server; ``RoomUnreadable`` when Redis
        fails to read it (a key of the wrong type)."""
        _check_id(room)
        if self._room_snapshots is None:
            raise RuntimeError("presence is not started")
        return (await self._room_snapshots.read([room]))[room]

    async def set_data(self, room: str, client_id: str, data: dict[str, Any]) -> bool | None:
        """Replace ``client_id``'s data in ``room``: True when it changed (one
        UPDATE), False when it was the same, None when the client is not a member.

        Raises ``ValueError`` for data that is not a JSON object of at most 1 KB.
        """
        _check_id(client_id)
        _check_id(room)
        result = await self._transitions.set_data(room, client_id, _encoded(data))
        return None if result < 0 else result > 0

    async def watched(self, clients: Sequence[str]) -> Snapshot:
        """Which of ``clients`` are online, with the presence stream position
        that is exact at."""
        position, online = await self._transitions.watched(clients)
        return Snapshot(position, online)

    async def replay_room(self, room: str, after: str) -> RoomReplay | None:
        """The entries of ``room`` after ``after``, for a resuming stream; None
        when they cannot be exact."""
        if self._replayer is None:
            raise RuntimeError("presence is not started")
        return await self._replayer.room_after(room, after)

    def stats(self) -> Stats:
        """The counters ``/metrics`` reports."""
        c = self.consumer
        return Stats(
            connections=self.deliveries.connections,
            heartbeats_published=self.publisher.published,
            leaves=self.publisher.leaves,
            heartbeats_applied=c.applied,
            heartbeats_malformed=c.malformed,
            heartbeats_stale=c.stale,
            heartbeats_claimed=self.claimer.claimed,
            heartbeats_retried=self.claimer.retried,
            online_published=c.online,
            offline_published=self.sweeper.published
            + self.listener.published
            + self.publisher.left,
            sweeper_lag=self.sweeper.lag,
            tick_lag=self.publisher.tick_lag,
            max_tick_lag=self.publisher.max_tick_lag,
            fanout_lag=self.reader.lag,
            overflows=self.deliveries.overflows,
            resets=self.deliveries.resets + self.scopes.resets,
            reconnects=self.recoveries,
            outages=self.outage.count,
            keyspace_events=bool(self.listener.events),
            rooms=len(self.scopes.rooms),
            room_memberships=self.held.rooms,
            scoped_connections=sum(
                1 for s in self.deliveries.subscribers if isinstance(s, ScopedSubscriber)
            ),
            room_transitions_delivered=self.room_reader.delivered,
            room_offline_published=self.sweeper.room_published,
        )

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


def _encoded(data: dict[str, Any]) -> str:
    try:
        return member_data(json.dumps(data))
    except TypeError:
        raise ValueError("data must be a JSON object") from None


def _check_id(client_id: str) -> None:
    if not is_valid_id(client_id):
        raise InvalidClientId(ID_RULE)


@dataclass(frozen=True, slots=True)
class Stats:
    """Counters since start, and gauges at the moment they were read."""

    connections: int
    heartbeats_published: int
    leaves: int
    heartbeats_applied: int
    heartbeats_malformed: int
    heartbeats_stale: int
    heartbeats_claimed: int
    heartbeats_retried: int
    online_published: int
    offline_published: int
    sweeper_lag: float
    tick_lag: float
    max_tick_lag: float
    fanout_lag: float
    overflows: int
    resets: int
    reconnects: int
    outages: int
    keyspace_events: bool
    #: Rooms with a stream here, room memberships held here, scoped streams.
    rooms: int
    room_memberships: int
    scoped_connections: int
    room_transitions_delivered: int
    room_offline_published: int
