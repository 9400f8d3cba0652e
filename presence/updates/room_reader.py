"""Room transitions in: one reader per process for the rooms its streams are in.

It reads the rooms' streams with ``XREAD`` and routes each entry to the
room's subscribers here (``Scopes``). A room joins the read once a stream in
it has its start (a snapshot or a replay): from that position, so nothing
after the start is missed. A room nobody here is in any more leaves the read.

What it does differently from one ``XREAD`` of every room followed:

- Every read is bounded. It names at most ``ROOMS_PER_READ`` rooms and
  returns at most ``ENTRIES_PER_READ`` entries in all (``XREAD``'s ``COUNT`` is
  per stream, so each room gets its share); a room that filled its share is
  read again at once. Parsing and routing yield every ``PARSE_ENTRIES``
  entries and ``ROUTE_PUSHES`` pushes, and the streams are woken once the
  whole read is in, ``WAKE_GROUP`` at a time, as the global fan-out does: a
  burst is spread over many short loop iterations and never holds the
  heartbeats back, while each stream still writes a read's worth at once.
- A read costs what changed, not every room followed. A room with an entry
  in its last read is read again at once; one with an entry in the last
  ``WARM_SECONDS`` at every tick (``TICK``); the ``ROOMS_PER_READ`` most
  recently active rooms are what the wait between two ticks blocks on, so
  their entries come at once; every other room, idle, is read in turn,
  ``IDLE_WINDOW`` of them per tick. The price is the first entry of an idle
  room: it waits for the room's turn, up to (idle rooms / ``IDLE_WINDOW``)
  ticks, one second at 10,000 idle rooms; the room is active then, and its
  next entries come at once. With up to ``ROOMS_PER_READ`` rooms followed,
  every room is in the blocking read, as if there were no tiers.

A room joined meanwhile waits at most a tick to be read; its events are not
lost, only later.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from typing import Any

from redis.exceptions import ResponseError

from ..contract import Keys
from ..entries import RoomDelivery, parse_room_delivery, text
from ..positions import stream_position
from ..redis_client import Redis, unparsed_streams
from ..settings import Settings
from ..supervise import Worker
from .delivery_log import WAKE_GROUP
from .room_checks import RoomChecks
from .scoped import ScopedSubscriber, Scopes

log = logging.getLogger(__name__)

#: Entries one read returns at most, whatever the number of rooms it names;
#: and from one room, at most (as many as a stream's queue holds).
ENTRIES_PER_READ = 5000
ENTRIES_PER_ROOM = 1000
#: Rooms one read names at most.
ROOMS_PER_READ = 250
#: Seconds between two ticks: the longest a read blocks, and how often rooms
#: with recent entries, and a window of idle ones, are read.
TICK = 0.1
#: Idle rooms read per tick: with 10,000 of them, each is read once a second.
IDLE_WINDOW = 1000
#: Seconds a room's last entry (or a stream's start there) keeps it read every tick.
WARM_SECONDS = 5.0
#: Entries parsed, and pushes to streams (and deliveries) routed, between two
#: yields to the event loop.
PARSE_ENTRIES = 1000
ROUTE_PUSHES = 1024
#: fakeredis answers a blocking XREAD of several streams at once: it is polled.
IDLE_POLL = 0.05


class RoomReader:
    def __init__(self, redis: Redis, settings: Settings, scopes: Scopes) -> None:
        self._redis = unparsed_streams(redis)
        self._keys: Keys = settings.keys
        self._scopes = scopes
        self._checks = RoomChecks(scopes)
        #: Room -> the position read up to; None until a stream there has its start.
        self.positions: dict[str, str | None] = {}
        # Rooms whose position no read has started from yet: a start may lower it.
        self._unread: set[str] = set()
        # Rooms to read again at once: they filled their share, or just started.
        self._due: set[str] = set()
        # Every started room -> when (monotonic) it last had an entry or a
        # start, the most recent last.
        self._active_at: dict[str, float] = {}
        # The started rooms in turn, for the idle window, and the next one's index.
        self._ring: list[str] = []
        self._turn = 0
        self._ring_stale = False
        self._next_tick = 0.0
        # Whether the rooms of the blocking read are still to be read this tick.
        self._recent_owed = False
        self._wake = asyncio.Event()
        self._blocks = not settings.in_memory
        # A room's share larger than a stream's queue would reset streams that keep up.
        self._per_room = min(ENTRIES_PER_ROOM, settings.queue_size)
        self.delivered = 0
        self.resyncs = 0
        #: Read round trips made, for tests and benchmarks.
        self.reads = 0
        # Each room's stream key, encoded, both ways.
        self._stream_keys: dict[str, bytes] = {}
        self._rooms_of: dict[bytes, str] = {}

    def join(self, room: str) -> bool:
        """A stream here joins ``room``; True when the room is read already (from
        before the stream's start, which is then gapless)."""
        if self.positions.get(room) is not None:
            return True
        self.positions.setdefault(room, None)
        return False

    def start_at(self, room: str, position: str, *, read: bool) -> bool:
        """A stream in ``room`` starts after ``position``; ``read`` is what ``join``
        said. False when the room was read past it meanwhile: that stream needs
        a fresh snapshot."""
        current = self.positions.get(room)
        if read:
            return True
        if current is None or room in self._unread:
            if current is None or stream_position(position) < stream_position(current):
                self.positions[room] = position
            self._ring_stale |= current is None
            self._unread.add(room)
            self._due.add(room)
            self._touch(room, time.monotonic())
            self._wake.set()
            return True
        return stream_position(current) <= stream_position(position)

    async def run(self, worker: Worker) -> None:
        worker.ok()
        while not worker.stopping:
            now = time.monotonic()
            if now >= self._next_tick:
                self._next_tick = now + TICK
                self._forget_left()
                await self._read(self._tick_rooms(now))
                self._recent_owed = True
            if self._due:
                await self._read(list(self._due))
            recent = [r for r in self._recent() if r not in self._due]
            if self._due:
                # No wait while rooms are behind: the tick's recent rooms now.
                if self._recent_owed:
                    self._recent_owed = False
                    await self._read(recent)
            else:
                self._recent_owed = False
                await self._wait(recent)
            worker.ok()

    async def _wait(self, recent: list[str]) -> None:
        """Until the next tick (or a start), blocked on ``recent`` rooms."""
        left = self._next_tick - time.monotonic()
        if left <= 0:
            return
        if recent and self._blocks:
            await self._read(recent, block_ms=max(1, math.ceil(left * 1000)))
            return
        if recent:
            await self._read(recent)
            left = min(left, IDLE_POLL)
        self._wake.clear()
        if self._due:
            return
        try:
            async with asyncio.timeout(left):
                await self._wake.wait()
        except TimeoutError:
            pass

    def _touch(self, room: str, now: float) -> None:
        self._active_at.pop(room, None)
        self._active_at[room] = now

    def _recent(self) -> list[str]:
        """The rooms the wait blocks on: the most recently active."""
        found: list[str] = []
        for room in reversed(self._active_at):
            if len(found) == ROOMS_PER_READ:
                break
            found.append(room)
        return found

    def _tick_rooms(self, now: float) -> list[str]:
        """What a tick reads besides the recent rooms: the warm ones, then the
        idle window."""
        warm = now - WARM_SECONDS
        rooms: list[str] = []
        skipped = 0
        for room in reversed(self._active_at):
            if skipped < ROOMS_PER_READ:
                skipped += 1  # recent: read by the wait
                continue
            if self._active_at[room] < warm:
                break
            if room not in self._due:
                rooms.append(room)
        if skipped < ROOMS_PER_READ:
            return rooms  # every room is recent
        if self._ring_stale:
            self._ring = list(self._active_at)
            self._ring_stale = False
        ring = self._ring
        recent = set(self._recent())
        window: list[str] = []
        for _ in range(len(ring)):
            if len(window) == IDLE_WINDOW:
                break
            room = ring[self._turn % len(ring)]
            self._turn = (self._turn + 1) % len(ring)
            at = self._active_at.get(room)
            if at is not None and at < warm and room not in recent and room not in self._due:
                window.append(room)
        return rooms + window

    def _forget_left(self) -> None:
        """Stop reading the rooms no stream here is in any more."""
        for room in [r for r in self.positions if r not in self._scopes.rooms]:
            del self.positions[room]
            self._checks.forget(room)
            self._unread.discard(room)
            self._due.discard(room)
            if self._active_at.pop(room, None) is not None:
                self._ring_stale = True
            if (key := self._stream_keys.pop(room, None)) is not None:
                del self._rooms_of[key]

    def _key(self, room: str) -> bytes:
        key = self._stream_keys.get(room)
        if key is None:
            key = self._stream_keys[room] = self._keys.room(room).presence.encode()
            self._rooms_of[key] = room
        return key

    async def _read(self, rooms: list[str], block_ms: int | None = None) -> None:
        for start in range(0, len(rooms), ROOMS_PER_READ):
            await self._read_group(rooms[start : start + ROOMS_PER_READ], block_ms)

    async def _read_group(self, rooms: list[str], block_ms: int | None) -> None:
        now = time.monotonic()
        reading = {
            r: p
            for r in rooms
            if (p := self.positions.get(r)) is not None and self._checks.readable(r, now)
        }
        if not reading:
            return
        for room in reading:
            self._unread.discard(room)
            self._due.discard(room)
        count = max(1, min(self._per_room, ENTRIES_PER_READ // len(reading)))
        # The command by hand, its keys encoded once per room: with a thousand
        # rooms, redis-py's xread() spent milliseconds per read on arguments.
        keys = [self._key(room) for room in reading]
        block = () if block_ms is None else (b"BLOCK", block_ms)
        # Positions checked before the entries are routed (see room_checks).
        checking = self._checks.due(list(reading), now)
        pipe = self._redis.pipeline(transaction=False)
        self._checks.queue(pipe, [(self._key(r), reading[r]) for r in checking])
        pipe.execute_command(
            "XREAD", b"COUNT", count, *block, b"STREAMS", *keys, *map(str.encode, reading.values())
        )
        *found, reply = await pipe.execute(raise_on_error=False)
        self.reads += 1
        if isinstance(reply, ResponseError) and len(checking) < len(reading):
            # A key of another type fails the whole read: find it.
            checking = list(reading)
            found = await self._positions(checking, reading)
        lost = self._checks.lost(checking, found, reading, now)
        if isinstance(reply, Exception):
            if not any(isinstance(r, ResponseError) for r in found):
                raise reply
            reply = None  # a room set aside failed the read: read again without it
        elif reply:
            items = reply.items() if isinstance(reply, dict) else reply
            grown = [self._rooms_of[k if isinstance(k, bytes) else k.encode()] for k, _ in items]
            unchecked = [r for r in grown if r not in checking and r in reading]
            if unchecked:
                found = await self._positions(unchecked, reading)
                lost |= self._checks.lost(unchecked, found, reading, now)
        await self._resync_lost(lost)
        if not reply:
            return
        rooms_of = self._rooms_of
        batch: list[RoomDelivery] = []
        # Room -> the position read up to: taken once its entries are routed,
        # so a position never runs ahead of the streams.
        newest: dict[str, str] = {}
        parsed = 0
        items = reply.items() if isinstance(reply, dict) else reply
        for key, entries in items:
            room = rooms_of[key if isinstance(key, bytes) else key.encode()]
            if room not in self.positions or room in lost:
                continue
            for entry_id, fields in entries:
                if (parsed := parsed + 1) % PARSE_ENTRIES == 0:
                    await asyncio.sleep(0)
                position = text(entry_id)
                delivery = parse_room_delivery(position, fields)
                if delivery is None or delivery.room != room:
                    log.warning("ignored malformed entry %s of room %s", position, room)
                else:
                    batch.append(delivery)
                newest[room] = position
            self._touch(room, now)
            if len(entries) >= count:
                self._due.add(room)  # maybe more behind it
        await self._route(batch)
        self.delivered += len(batch)
        for room, position in newest.items():
            if room in self.positions:
                self.positions[room] = position

    async def _positions(self, rooms: list[str], reading: dict[str, str]) -> list[Any]:
        pipe = self._redis.pipeline(transaction=False)
        self._checks.queue(pipe, [(self._key(r), reading[r]) for r in rooms])
        found: list[Any] = await pipe.execute(raise_on_error=False)
        return found

    async def _resync_lost(self, lost: set[str]) -> None:
        """Fresh snapshots for the streams of rooms whose position read from is
        gone (trimmed past it, or Redis lost it); the room is read on from its
        newest entry, which the snapshots, taken after, include."""
        if not lost:
            return
        pipe = self._redis.pipeline(transaction=False)
        for room in lost:
            pipe.xrevrange(self._key(room), count=1)
        for room, last in zip(lost, await pipe.execute(), strict=True):
            log.warning(
                "room %s lost entries after %s: sending fresh snapshots",
                room,
                self.positions.get(room),
            )
            if room in self.positions:
                self.positions[room] = text(last[0][0]) if last else "0-0"
            self.resyncs += 1
            self._scopes.resync_room(room)

    async def _route(self, batch: list[RoomDelivery]) -> None:
        """Route ``batch``, yielding to the event loop every ``ROUTE_PUSHES``,
        then wake its streams, ``WAKE_GROUP`` per loop iteration, as the global
        fan-out does."""
        woken: set[ScopedSubscriber] = set()
        done = self._scopes.deliver_rooms(batch, budget=ROUTE_PUSHES, woken=woken)
        while done < len(batch):
            await asyncio.sleep(0)
            done = self._scopes.deliver_rooms(batch, done, ROUTE_PUSHES, woken)
        streams = list(woken)
        for start in range(0, len(streams), WAKE_GROUP):
            for stream in streams[start : start + WAKE_GROUP]:
                stream.wake()
            await asyncio.sleep(0)
