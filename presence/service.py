"""``Service``: one process's stages wired together, behind ``Presence``.

Heartbeats in (``heartbeats``), transitions in Lua (``transitions``), presence
out (``updates``); ``web`` serves it over HTTP through this object, and
``Presence`` is the small public face of it. Holding a client online and
subscribing to others are separate calls: a connection that cannot start
(Redis unreachable) holds nothing, so it leaves nothing to announce.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import check_id
from .entries import encode_data, text
from .errors import RedisMisconfigured, RedisUnavailable
from .events import OnlineClient
from .heartbeats.claims import Claimer
from .heartbeats.consumer import HeartbeatConsumer
from .heartbeats.held import HeldClients
from .heartbeats.publisher import HeartbeatPublisher
from .redis_client import BLOCK_MS, Redis, check_version, open_redis, wait_for_redis
from .settings import Settings
from .supervise import MAX_BACKOFF, Outage, Worker
from .transitions.keyspace import KeyspaceListener
from .transitions.scripts import Transitions
from .transitions.sweeper import Sweeper
from .updates.connections import Connections
from .updates.delivery_log import DeliveryLog, Subscriber
from .updates.occupancy import OccupancyPoller
from .updates.reader import PresenceReader
from .updates.replay import Replay, Replayer
from .updates.room_reader import RoomReader
from .updates.room_snapshot import RoomSnapshot, RoomSnapshotReader
from .updates.scoped import Scope, ScopedSubscriber, Scopes
from .updates.scoped_start import ScopedSources
from .updates.snapshot import Snapshot, SnapshotReader

HEALTH_TIMEOUT = 2.0
#: Events a scoped stream may fall behind before it gets a fresh snapshot
#: (its queue holds references to shared deliveries).
SCOPED_QUEUE = 1024


class Service:
    """The stages of one process: started, they run as supervised workers."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        #: The clients this process holds online.
        self.held = HeldClients(settings.leave_grace)
        #: Every connection of this process, and the log global ones read.
        self.connections = Connections(settings.queue_size, settings.stall_timeout)
        self.deliveries = DeliveryLog(settings.queue_size)
        #: The scoped subscribers of this process, by room and watched id.
        self.scopes = Scopes()
        self.outage = Outage()
        # Set once closing begins: a client released after it leaves no leave.
        self._closing = False
        self._redis: Redis | None = None
        self._workers: list[Worker] = []
        self._snapshots: SnapshotReader | None = None
        self._replayer: Replayer | None = None
        self._room_snapshots: RoomSnapshotReader | None = None

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

    @property
    def backoff(self) -> float:
        """The longest wait between two retries: at least twice an interval
        keeps recovery within two intervals."""
        return min(MAX_BACKOFF, self.settings.heartbeat_interval / 2)

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
            reader = PresenceReader(redis, settings, self.deliveries, self.scopes, self.connections)
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
        self._transitions = transitions
        self._snapshots = snapshots = SnapshotReader(transitions)
        self._replayer = replayer = Replayer(redis, settings.keys, settings.queue_size)
        self._room_snapshots = room_snapshots = RoomSnapshotReader(transitions)
        self.room_reader = RoomReader(redis, settings, self.scopes)
        self.occupancy = OccupancyPoller(redis, settings.keys, self.scopes)
        #: What scoped streams start from.
        self.scoped_sources = ScopedSources(
            self.room_reader, room_snapshots, replayer, transitions, self.occupancy
        )
        self.consumer = consumer
        self.claimer = Claimer(settings, transitions, consumer)
        self.sweeper = Sweeper(transitions, grace=settings.heartbeat_interval)
        self.listener = listener
        self.publisher = HeartbeatPublisher(settings, self.held, transitions, self.outage)
        self.reader = reader
        # Loops blocked in a Redis read get one block's time to end by themselves.
        grace = BLOCK_MS / 1000 + 0.5
        loops: list[tuple[str, Callable[[Worker], Awaitable[None]], float]] = [
            ("heartbeat publisher", self.publisher.run, 0),  # first: close() relies on it
            ("heartbeat consumer", self.consumer.run, grace),
            ("heartbeat claimer", self.claimer.run, 0),
            ("deadline sweeper", self.sweeper.run, 0),
            ("keyspace listener", self.listener.run, grace),
            ("presence reader", reader.run, grace),
            ("fan-out", self.deliveries.fan_out, 0),
            ("snapshot reader", snapshots.run, 0),
            ("room reader", self.room_reader.run, grace),
            ("room snapshot reader", room_snapshots.run, 0),
            ("occupancy counter", self.occupancy.run, 0),
            ("connection pruner", self.connections.prune_closed, 0),
        ]
        for name, loop, stop_grace in loops:
            worker = Worker(name, stop_grace, self.outage, self.backoff)
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

    def close_streams(self) -> None:
        """End every subscription, as at shutdown: their clients get no leave.

        They may be reconnecting to another server; the TTL decides.
        """
        self._closing = True
        self.connections.close_all("shutdown")

    @contextmanager
    def held_online(
        self, client_id: str, rooms: Sequence[str] = (), data: str | None = None
    ) -> Iterator[None]:
        """Keep ``client_id`` online, and a member of ``rooms``, heartbeated by
        this server while the block runs; ``data`` (canonical JSON, see
        ``entries.member_data``) becomes its data in those rooms.

        After the block, once no other block holds the client (in a room) here
        and the leave grace has passed, this server announces that it left
        (OFFLINE unless another server holds it).
        """
        check_id(client_id)
        for room in rooms:
            check_id(room)
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

    @contextmanager
    def subscribed(
        self,
        client_id: str | None,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> Iterator[Subscriber]:
        """Subscribe a connection of ``client_id`` to everyone else's events
        (None: an in-process listener, to everyone's).

        ``alive`` tells whether the underlying connection is still open (a
        closed one is dropped within ``PRUNE_INTERVAL``); ``abort`` drops the
        connection when its reader falls behind and stops reading, which
        ``buffered`` (the bytes not yet sent) tells.
        """
        if client_id is not None:
            check_id(client_id)
        subscriber = Subscriber(
            self.deliveries, client_id, alive=alive, abort=abort, buffered=buffered
        )
        with self.connections.subscribed(subscriber), self.deliveries.reading(subscriber):
            yield subscriber

    @contextmanager
    def scoped(
        self,
        client_id: str | None,
        scope: Scope,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> Iterator[ScopedSubscriber]:
        """Subscribe a connection of ``client_id`` (None: an in-process
        listener) to what ``scope`` covers (see ``subscribed``); its events
        queue up from now on."""
        if client_id is not None:
            check_id(client_id)
        limit = min(self.settings.queue_size, SCOPED_QUEUE)
        subscriber = ScopedSubscriber(
            client_id, scope, limit, alive=alive, abort=abort, buffered=buffered
        )
        with self.connections.subscribed(subscriber), self.scopes.subscribed(subscriber):
            yield subscriber

    async def snapshot(self) -> Snapshot:
        """Who is online, with the presence stream position it is exact at."""
        if self._snapshots is None:
            raise RuntimeError("presence is not started")
        return await self._snapshots.get()

    async def replay(self, after: str) -> Replay | None:
        """The presence entries after stream entry ``after``, for a resuming
        connection; None when they cannot be exact."""
        if self._replayer is None:
            raise RuntimeError("presence is not started")
        return await self._replayer.after(after)

    async def watched(self, clients: Sequence[str]) -> Snapshot:
        """Which of ``clients`` are online, with the presence stream position
        that is exact at."""
        position, online = await self._transitions.watched(clients)
        return Snapshot(position, online)

    async def room_snapshots(self, rooms: Sequence[str]) -> dict[str, RoomSnapshot]:
        """Each room's members, with the room stream position they are exact at;
        ``RoomUnreadable`` for the first of them Redis fails to read."""
        if self._room_snapshots is None:
            raise RuntimeError("presence is not started")
        return await self._room_snapshots.get(rooms)

    async def room(self, room: str) -> RoomSnapshot:
        """The members of ``room``, on any server; ``RoomUnreadable`` when Redis
        fails to read it (a key of the wrong type)."""
        check_id(room)
        if self._room_snapshots is None:
            raise RuntimeError("presence is not started")
        return (await self._room_snapshots.read([room]))[room]

    async def set_data(self, room: str, client_id: str, data: dict[str, Any]) -> bool | None:
        """Replace ``client_id``'s data in ``room``: True when it changed (one
        UPDATE), False when it was the same, None when the client is not a member."""
        check_id(client_id)
        check_id(room)
        result = await self._transitions.set_data(room, client_id, encode_data(data))
        return None if result < 0 else result > 0

    async def online(self) -> list[OnlineClient]:
        """Every online client, on any server, sorted by client id."""
        flat = await self.redis.hgetall(self.settings.keys.servers)
        return sorted(
            (OnlineClient(text(c), text(s)) for c, s in flat.items()),
            key=lambda o: o.client,
        )

    async def status(self, client_id: str) -> OnlineClient | None:
        """The client and its server when it is online, else None."""
        check_id(client_id)
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
