"""A scoped stream's start, and its fresh starts, each one call: the gapless join.

The stream is subscribed first, so whatever is routed to it from then on is
queued. Its rooms join the room reader before anything is read. Then comes
its start: the replay after ``Last-Event-ID`` when every part can be
replayed exactly, else a snapshot (a reset when a resume was asked for). A
room the reader was not reading yet is read from that start on. One it read
past the start meanwhile cannot be exact, so the stream starts again at once.
Events queued up to the start are dropped as they come: nothing is missed,
nothing is sent twice.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..entries import RoomDelivery
from ..frames import parse_scope_id
from ..positions import Seen, seen, stream_position
from ..shards import Router
from .connections import Resync
from .global_state import GlobalState
from .occupancy import OccupancyPoller
from .replay import Replayer
from .room_reader import RoomReader
from .room_snapshot import RoomSnapshot, RoomSnapshotReader
from .scoped import Item, Occupancy, ScopedSubscriber
from .snapshot import Snapshot


@dataclass(frozen=True, slots=True)
class ScopedSources:
    """What every scoped stream starts from: the readers they share."""

    #: Each shard's (one, on a standalone Redis).
    room_reader: Router[RoomReader]
    room_snapshots: RoomSnapshotReader
    replayer: Replayer
    state: GlobalState
    occupancy: OccupancyPoller


@dataclass(frozen=True, slots=True)
class ScopeSnapshot:
    """The watched ids that are online, and each room's members."""

    watched: Snapshot | None
    #: In the scope's order.
    rooms: list[RoomSnapshot]
    #: It replaces what the client knew: a resume could not be exact, or a resync.
    reset: bool


@dataclass(frozen=True, slots=True)
class Start:
    """What a scoped stream starts, or starts again, with."""

    #: Where it is exact: one stream position per part, the watch list's then each room's.
    positions: list[str]
    #: None when it resumed with a replay.
    snapshot: ScopeSnapshot | None
    #: The events replayed (none after a snapshot), then the occupancy counts.
    items: list[Item]


async def start_scoped(
    sources: ScopedSources, subscriber: ScopedSubscriber, resume: str | None
) -> tuple[ScopedStream, Start]:
    """Start ``subscriber``, subscribed just now, after ``resume`` (its
    ``Last-Event-ID``); ``RoomUnreadable`` or a Redis error when it cannot."""
    stream = ScopedStream(sources, subscriber)
    return stream, await stream.start(resume)


class ScopedStream:
    """One scoped stream after its start: what is routed to it, and a fresh
    start whenever it may have missed some."""

    def __init__(self, sources: ScopedSources, subscriber: ScopedSubscriber) -> None:
        self.subscriber = subscriber
        self._sources = sources
        scope = subscriber.scope
        self._part = {room: (scope.watch is not None) + i for i, room in enumerate(scope.rooms)}
        # Per part, the last position passed on (the watch list's: per shard):
        # each part's events come in its stream's order, so one at or before
        # it was passed on already.
        self._sent: list[Seen] = [((0, 0),)] * scope.streams

    async def start(self, resume: str | None) -> Start:
        scope = self.subscriber.scope
        readers = self._sources.room_reader
        # Before anything is read: a room read already is gapless from here.
        read = {room: readers[readers.of(room)].join(room) for room in scope.rooms}
        positions = parse_scope_id(resume, scope.tag, scope.streams) if resume else None
        start = None if positions is None else await self._replay(positions)
        if start is None:
            start = await self._snapshot(reset=bool(resume))
        stale = False
        for room in scope.rooms:
            reader = readers[readers.of(room)]
            if not reader.start_at(room, start.positions[self._part[room]], read=read[room]):
                stale = True  # read past the start meanwhile
        counts = await self._counts()
        if stale:
            self.subscriber.resync()
        return Start(start.positions, start.snapshot, start.items + counts)

    async def restart(self) -> Start:
        """A fresh snapshot, marked a reset: the stream may have missed events.
        Its rooms are read already, since its start."""
        start = await self._snapshot(reset=True)
        return Start(start.positions, start.snapshot, await self._counts())

    async def next(self) -> Start | list[Item]:
        """What ``items`` gives, or a fresh start when it may have missed some."""
        try:
            return await self.items()
        except Resync:
            return await self.restart()

    async def items(self) -> list[Item]:
        """The events routed to it since, after its start and not about its own
        client; empty once closed. ``Resync`` when it may have missed some:
        ``restart()`` then."""
        while items := await self.subscriber.items():
            if found := self._new(items):
                return found
        return []

    async def _replay(self, positions: list[str]) -> Start | None:
        """The events after ``positions``; None unless every part is exact."""
        scope = self.subscriber.scope
        replayer = self._sources.replayer
        items: list[Item] = []
        if scope.watch is not None:
            replay = await replayer.after(positions[0])
            if replay is None:
                return None
            items += [d for d in replay.deliveries if d.client in scope.watch]
        for room, after in zip(scope.rooms, positions[scope.watch is not None :], strict=True):
            found = await replayer.room_after(room, after)
            if found is None:
                return None
            items += found.deliveries
        self._sent = [seen(p) for p in positions]
        return Start(positions, None, self._new(items))

    async def _snapshot(self, *, reset: bool) -> Start:
        scope = self.subscriber.scope
        watched = None
        positions: list[str] = []
        if scope.watch is not None:
            position, online = await self._sources.state.watched(sorted(scope.watch))
            watched = Snapshot(position, online)
            positions.append(position)
        found = await self._sources.room_snapshots.get(scope.rooms) if scope.rooms else {}
        rooms = [found[room] for room in scope.rooms]
        positions += [members.position for members in rooms]
        self._sent = [seen(p) for p in positions]
        return Start(positions, ScopeSnapshot(watched, rooms, reset), [])

    async def _counts(self) -> list[Item]:
        """The occupancy events of counts read now. A count the poller queued
        meanwhile stays the one on record: it comes after these, and the next
        poll corrects it."""
        subscriber = self.subscriber
        counts = await self._sources.occupancy.counts(list(subscriber.scope.occupancy))
        for room, count in counts.items():
            subscriber.counts.setdefault(room, count)
        return [Occupancy(room, count) for room, count in counts.items()]

    def _new(self, items: list[Item]) -> list[Item]:
        """``items`` but those about its own client and those passed on already."""
        found: list[Item] = []
        client = self.subscriber.client
        for item in items:
            if isinstance(item, Occupancy):
                found.append(item)
                continue
            if item.client == client:
                continue
            if isinstance(item, RoomDelivery):
                part, shard, position = self._part[item.room], 0, item.position
            else:
                part, shard, position = 0, item.shard, stream_position(item.id)
            sent = self._sent[part]
            if position <= sent[shard]:
                continue  # in the start already
            self._sent[part] = (*sent[:shard], position, *sent[shard + 1 :])
            found.append(item)
        return found
