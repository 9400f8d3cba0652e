"""``Service``: one process's stages wired together, behind ``Presence``.

Heartbeats in (``heartbeats``), transitions in Lua (``transitions``), presence
out (``updates``); ``web`` serves it over HTTP through this object, and
``Presence`` is the small public face of it. Holding a client online and
subscribing to others are separate calls: a connection that cannot start
(Redis unreachable) holds nothing, so it leaves nothing to announce.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisClusterException, RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from .contract import check_id
from .entries import encode_data
from .errors import RedisMisconfigured, RedisUnavailable
from .events import Member, OnlineClient
from .heartbeats.claims import Claimer
from .heartbeats.consumer import HeartbeatConsumer
from .heartbeats.held import HeldClients
from .heartbeats.publisher import HeartbeatPublisher
from .positions import Positions
from .redis_client import BLOCK_MS, Redis, check_version, open_redis, wait_for_redis
from .redis_cluster import cluster_of, is_cluster
from .settings import Settings
from .shards import Router, agree_on_shards, shard_tags
from .supervise import MAX_BACKOFF, Outage, Worker
from .transitions.cluster_keyspace import ClusterKeyspaceListener
from .transitions.keyspace import KeyspaceListener
from .transitions.scripts import Transitions
from .transitions.sweeper import Sweeper
from .updates.connections import Connections
from .updates.delivery_log import DeliveryLog, Subscriber
from .updates.global_state import GlobalState
from .updates.occupancy import OccupancyPoller
from .updates.reader import PresenceReader
from .updates.replay import Replay, Replayer
from .updates.room_reader import RoomReader
from .updates.room_snapshot import RoomSnapshot, RoomSnapshotReader
from .updates.scoped import Scope, ScopedSubscriber, Scopes
from .updates.scoped_start import ScopedSources
from .updates.snapshot import Snapshot, SnapshotReader
from .webhooks import Webhooks, warn_if_left_on

log = logging.getLogger(__name__)

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
        #: The webhook sender, with ``webhook_url``.
        self.webhooks: Webhooks | None = None

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
            if (cluster := await cluster_of(redis, settings)) is not None:
                await redis.aclose()
                redis = cluster
            await self._prepare(redis)
        except BaseException as exc:
            await redis.aclose()
            if isinstance(exc, (RedisConnectionError, RedisTimeoutError, OSError)):
                raise RedisUnavailable(f"lost Redis while starting: {exc}") from None
            if isinstance(exc, RedisClusterException):  # e.g. slots no node serves
                raise RedisUnavailable(f"the cluster cannot serve presence: {exc}") from None
            if isinstance(exc, RedisError):
                raise RedisMisconfigured(f"Redis refused a start-up command: {exc}") from None
            raise
        self._redis = redis
        self._start_workers()

    async def _prepare(self, redis: Redis) -> None:
        """Every stage, on one Redis or, sharded, on each shard of a cluster."""
        settings = self.settings
        sharded = is_cluster(redis)
        shards = settings.sharded() if sharded else [settings]
        if sharded:
            await agree_on_shards(redis, settings)
            log.info("Redis is a cluster: %d shards, tags %s", len(shards), shard_tags(len(shards)))
        # More than one shard: a heartbeat with a room counts for the room
        # alone (a room's shard is seldom its client's, which gets its own).
        alone = len(shards) > 1
        self.shards = Router([Transitions(redis, s, rooms_alone=alone) for s in shards])
        await self.shards[0].load()
        keys = Router([s.keys for s in shards])
        self.consumers = [
            HeartbeatConsumer(redis, s, t) for s, t in zip(shards, self.shards.items, strict=True)
        ]
        for consumer in self.consumers:
            await consumer.ensure_group()  # fails fast on a key of the wrong type
        # Before anything below can publish (the keyspace listener's start does):
        # a group created later, at the stream's end, would miss those entries.
        rooms_hooked = settings.webhook_url and settings.webhook_events in ("rooms", "all")
        if settings.webhook_url:
            labels = [f" of shard {t}" for t in shard_tags(len(shards))] if sharded else [""]
            self.webhooks = Webhooks(shards, self.shards.items, labels)
            await self.webhooks.prepare()
        if not rooms_hooked:
            await warn_if_left_on(self.shards.items)
        self.positions = positions = Positions(len(shards))
        self.readers = [
            PresenceReader(redis, s, self.deliveries, self.scopes, self.connections, i, positions)
            for i, s in enumerate(shards)
        ]
        for reader in self.readers:
            await reader.start()
        listener: KeyspaceListener | ClusterKeyspaceListener
        if sharded:
            listener = ClusterKeyspaceListener(
                redis, list(zip(keys.items, self.shards.items, strict=True))
            )
        else:
            listener = KeyspaceListener(redis, settings, self.shards[0])
        await listener.start()
        self.listener = listener
        self.state = state = GlobalState(self.shards)
        self._snapshots = SnapshotReader(state)
        self._replayer = replayer = Replayer(redis, keys, settings.queue_size)
        self._room_snapshots = room_snapshots = RoomSnapshotReader(self.shards)
        self.room_readers = Router([RoomReader(redis, s, self.scopes) for s in shards])
        self.occupancy = OccupancyPoller(redis, keys, self.scopes)
        #: What scoped streams start from.
        self.scoped_sources = ScopedSources(
            self.room_readers, room_snapshots, replayer, state, self.occupancy
        )
        self.claimers = [
            Claimer(s, t, c)
            for s, t, c in zip(shards, self.shards.items, self.consumers, strict=True)
        ]
        self.sweepers = [
            Sweeper(
                t,
                grace=settings.heartbeat_interval,
                outage=self.outage,
                # Half the slack: a call held up longer may hide heartbeats that failed.
                patience=settings.slack / 2,
            )
            for t in self.shards.items
        ]
        self.publisher = HeartbeatPublisher(
            settings, self.held, self.shards[0], self.outage, self.shards
        )
        # Shard 0's, by the names a standalone Redis has always had.
        self.consumer, self.reader = self.consumers[0], self.readers[0]
        self.claimer, self.sweeper = self.claimers[0], self.sweepers[0]
        self.room_reader = self.room_readers[0]
        if self.webhooks is not None:
            await self.webhooks.open()  # last: nothing after it can fail and leak it

    def _start_workers(self) -> None:
        assert self._snapshots is not None
        assert self._room_snapshots is not None
        # Loops blocked in a Redis read get one block's time to end by themselves.
        grace = BLOCK_MS / 1000 + 0.5
        Loop = tuple[str, Callable[[Worker], Awaitable[None]], float]
        tags = shard_tags(len(self.readers)) if len(self.readers) > 1 else ("",)
        per_shard: list[Loop] = []
        for i, tag in enumerate(tags):
            of = f" of shard {tag}" if tag else ""
            per_shard += [
                (f"heartbeat consumer{of}", self.consumers[i].run, grace),
                (f"heartbeat claimer{of}", self.claimers[i].run, 0),
                (f"deadline sweeper{of}", self.sweepers[i].run, 0),
                (f"presence reader{of}", self.readers[i].run, grace),
                (f"room reader{of}", self.room_readers[i].run, grace),
            ]
            if self.webhooks is not None:
                # Grace: a post under way may end; if not, its batch stays pending.
                per_shard.append((f"webhook sender{of}", self.webhooks.deliveries[i].run, 1.0))
        loops: list[Loop] = [
            ("heartbeat publisher", self.publisher.run, 0),  # first: close() relies on it
            *per_shard,
            ("keyspace listener", self.listener.run, grace),
            ("fan-out", self.deliveries.fan_out, 0),
            ("snapshot reader", self._snapshots.run, 0),
            ("room snapshot reader", self._room_snapshots.run, 0),
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
        if self.webhooks is not None:
            await self.webhooks.close()
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
        position, online = await self.state.watched(clients)
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
        shard = self.shards[self.shards.of(room)]
        result = await shard.set_data(room, client_id, encode_data(data))
        return None if result < 0 else result > 0

    async def online(self) -> list[OnlineClient]:
        """Every online client, on any server, sorted by client id."""
        return await self.state.online()

    async def status(self, client_id: str) -> OnlineClient | None:
        """The client and its server when it is online, else None."""
        return await self.state.status(client_id)

    async def last_seen(self, client_id: str, room: str | None = None) -> int | None:
        """Unix ms of the client's last OFFLINE (in ``room``, if given) within
        the retention, else None."""
        if room is None:
            return await self.state.last_seen(client_id)
        check_id(client_id)
        check_id(room)
        return await self.shards[self.shards.of(room)].last_seen(client_id, room)

    async def member(self, room: str, client_id: str) -> Member | None:
        """``client_id`` in ``room`` with its server and data, or None."""
        check_id(client_id)
        check_id(room)
        return await self.shards[self.shards.of(room)].member(room, client_id)

    async def problems(self) -> list[str]:
        """Why this process is unhealthy; empty when Redis answers and every worker runs."""
        found = [p for w in self._workers if (p := w.problem) is not None]
        if not self._workers:
            found.append("presence is not started")
            return found
        try:
            async with asyncio.timeout(HEALTH_TIMEOUT):
                if is_cluster(self.redis):
                    # Every primary: each serves shards; a replica serves none.
                    await self.redis.execute_command("PING", target_nodes="primaries")  # type: ignore[no-untyped-call]
                else:
                    await self.redis.ping()
        except Exception as exc:
            found.insert(0, f"redis: {type(exc).__name__}: {exc}".rstrip(": "))
        return found
