"""Room transitions in: one reader per process for the rooms its streams are in.

It reads every such room's stream in one ``XREAD`` and routes each entry to
the room's subscribers here (``Scopes``). A room joins the read once a
stream in it has its start (a snapshot or a replay): from that position, so
nothing after the start is missed. A room nobody here is in any more leaves
the read.

The read blocks for a short while only, so a room joined meanwhile waits at
most that long to be read; its events are not lost, only later.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ..contract import Keys
from ..redis_client import Redis, unparsed_streams
from ..settings import Settings
from ..supervise import Worker
from ..wire import RoomDelivery, parse_room_delivery, stream_position, text
from .scoped import Scopes

log = logging.getLogger(__name__)

BATCH = 1000
#: How long a read waits for entries; a room joined meanwhile waits as long.
BLOCK_MS = 100
IDLE_POLL = 0.05


class RoomReader:
    def __init__(self, redis: Redis, settings: Settings, scopes: Scopes) -> None:
        self._redis = unparsed_streams(redis)
        self._keys: Keys = settings.keys
        self._scopes = scopes
        #: Room -> the position read up to; None until a stream there has its start.
        self.positions: dict[str, str | None] = {}
        # Rooms whose position no read has started from yet: a start may lower it.
        self._unread: set[str] = set()
        self._wake = asyncio.Event()
        # fakeredis answers a blocking XREAD of several streams at once: poll.
        self._block: int | None = None if settings.in_memory else BLOCK_MS
        self.delivered = 0
        self.resyncs = 0
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
            self._unread.add(room)
            self._wake.set()
            return True
        return stream_position(current) <= stream_position(position)

    async def run(self, worker: Worker) -> None:
        worker.ok()
        while not worker.stopping:
            for room in [r for r in self.positions if r not in self._scopes.rooms]:
                del self.positions[room]
                self._unread.discard(room)
                if (key := self._stream_keys.pop(room, None)) is not None:
                    del self._rooms_of[key]
            reading = {r: p for r, p in self.positions.items() if p is not None}
            if not reading:
                self._wake.clear()
                try:
                    async with asyncio.timeout(IDLE_POLL * 4):
                        await self._wake.wait()
                except TimeoutError:
                    pass
                worker.ok()
                continue
            self._unread.clear()
            await self._read(reading)
            worker.ok()
            if self._block is None:
                await asyncio.sleep(IDLE_POLL)

    def _key(self, room: str) -> bytes:
        key = self._stream_keys.get(room)
        if key is None:
            key = self._stream_keys[room] = self._keys.room(room).presence.encode()
            self._rooms_of[key] = room
        return key

    async def _read(self, reading: dict[str, str]) -> None:
        # The command by hand, its keys encoded once per room: with a thousand
        # rooms, redis-py's xread() spent milliseconds per read on arguments.
        keys = [self._key(room) for room in reading]
        block = () if self._block is None else (b"BLOCK", self._block)
        reply: Any = await self._redis.execute_command(  # type: ignore[no-untyped-call]
            "XREAD", b"COUNT", BATCH, *block, b"STREAMS", *keys, *map(str.encode, reading.values())
        )
        if not reply:
            return
        rooms = self._rooms_of
        batch: list[RoomDelivery] = []
        grown: dict[str, str] = {}
        items = reply.items() if isinstance(reply, dict) else reply
        for key, entries in items:
            room = rooms[key if isinstance(key, bytes) else key.encode()]
            if room not in self.positions:
                continue
            for entry_id, fields in entries:
                position = text(entry_id)
                delivery = parse_room_delivery(position, fields)
                if delivery is None or delivery.room != room:
                    log.warning("ignored malformed entry %s of room %s", position, room)
                else:
                    batch.append(delivery)
                self.positions[room] = position
            grown[room] = reading[room]
        self._scopes.deliver_rooms(batch)
        self.delivered += len(batch)
        await self._check(grown)

    async def _check(self, grown: dict[str, str]) -> None:
        """Resync the streams of a room whose position read from is gone: its
        stream was trimmed past it, or Redis lost it."""
        checked = [(r, p) for r, p in grown.items() if p != "0-0"]
        if not checked:
            return
        pipe = self._redis.pipeline(transaction=False)
        for room, position in checked:
            pipe.xrange(self._keys.room(room).presence, position, position, count=1)
        for (room, position), found in zip(checked, await pipe.execute(), strict=True):
            if not found:
                log.warning(
                    "room %s lost entries after %s: sending fresh snapshots", room, position
                )
                self.resyncs += 1
                self._scopes.resync_room(room)
