"""Resuming an SSE stream after ``Last-Event-ID``: the missed entries, from the stream.

The entry the client last saw must still be in the presence stream: then every
entry after it is too, and replaying them is gapless. When it is gone (trimmed,
Redis lost its data) or unknown, or more entries were missed than a
connection may lag, there is nothing exact to replay and the caller sends a
fresh snapshot instead.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass

from redis.exceptions import ResponseError

from ..contract import Keys
from ..entries import Delivery, RoomDelivery, parse_delivery, parse_room_delivery, text
from ..positions import split, valid_entry_id
from ..redis_client import Redis, unparsed_streams
from ..shards import Router

#: Replays read Redis per connection: a reconnect storm takes turns.
CONCURRENT = 16


@dataclass(frozen=True, slots=True)
class Replay:
    """The entries after a resume position, and the position they end at."""

    deliveries: list[Delivery]
    position: str


@dataclass(frozen=True, slots=True)
class RoomReplay:
    """The entries of a room after a resume position, and the position they end at."""

    deliveries: list[RoomDelivery]
    position: str


class Replayer:
    def __init__(self, redis: Redis, shards: Router[Keys], limit: int) -> None:
        """``shards``: each shard's keys (one, on a standalone Redis)."""
        self._redis = unparsed_streams(redis)
        self._shards = shards
        self._limit = limit
        self._turns = asyncio.Semaphore(CONCURRENT)

    async def after(self, position: str) -> Replay | None:
        """Every presence entry after ``position`` (an entry id, on a cluster
        one per shard), or None when that cannot be exact."""
        shards = self._shards.items
        if len(shards) == 1:
            found = await self._entries(shards[0].presence, position)
            if found is None:
                return None
            missed, end = found
            return Replay([d for i, f in missed if (d := parse_delivery(i, f)) is not None], end)
        ids = split(position, len(shards))
        if ids is None:
            return None
        # The shards' streams each from its own entry (one with none seen, 0-0,
        # from its start, when it never lost an entry), in turn, with what the
        # shards before left of one budget: a stale resume reads at most
        # ``limit`` entries in all, as on one Redis.
        read = []
        left = self._limit
        for k, after in zip(shards, ids, strict=True):
            found = await (
                self._all(k.presence, left)
                if after == "0-0"
                else self._entries(k.presence, after, left)
            )
            if found is None:
                return None
            read.append(found)
            left -= len(found[0])
        deliveries: list[Delivery] = []
        for shard, found in enumerate(read):
            for entry_id, fields in found[0]:
                ids[shard] = entry_id
                if (d := parse_delivery(entry_id, fields, shard, ",".join(ids))) is not None:
                    deliveries.append(d)
            ids[shard] = found[1]
        return Replay(deliveries, ",".join(ids))

    async def room_after(self, room: str, entry_id: str) -> RoomReplay | None:
        """Every entry of ``room`` after ``entry_id``, or None when that cannot be
        exact. ``0-0`` (the room had none) is exact while the room has no entry
        older than a TTL: its stream never lost any."""
        stream = self._shards[self._shards.of(room)].room(room).presence
        found = await (self._all(stream) if entry_id == "0-0" else self._entries(stream, entry_id))
        if found is None:
            return None
        missed, position = found
        deliveries = [
            d for i, f in missed if (d := parse_room_delivery(i, f)) is not None and d.room == room
        ]
        return RoomReplay(deliveries, position)

    async def _all(
        self, stream: str, limit: int | None = None
    ) -> tuple[list[tuple[str, list[bytes]]], str] | None:
        """Every entry of ``stream``, when it never lost one (Redis 7 counts
        them) and there are at most ``limit`` (default: the replay limit)."""
        limit = self._limit if limit is None else limit
        async with self._turns:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xlen(stream)
            pipe.execute_command("XINFO", "STREAM", stream)
            pipe.xrange(stream, "-", "+", count=limit + 1)
            length, info, missed = await pipe.execute(raise_on_error=False)
        if isinstance(info, ResponseError) and length == 0:
            return [], "0-0"  # no such stream: it has had no entry since
        if isinstance(info, Exception) or isinstance(missed, Exception):
            return None
        fields = info if isinstance(info, dict) else dict(zip(info[::2], info[1::2], strict=False))
        added = fields.get(b"entries-added", fields.get("entries-added"))
        if added is None or int(added) != length or len(missed) > limit:
            return None
        entries = [(text(raw_id), f) for raw_id, f in missed]
        return entries, entries[-1][0] if entries else "0-0"

    async def _entries(
        self, stream: str, entry_id: str, limit: int | None = None
    ) -> tuple[list[tuple[str, list[bytes]]], str] | None:
        limit = self._limit if limit is None else limit
        if not valid_entry_id(entry_id) or entry_id == "0-0":
            return None
        async with self._turns:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrange(stream, entry_id, entry_id, count=1)
            pipe.xrange(stream, f"({entry_id}", "+", count=limit + 1)
            try:
                found, missed = await pipe.execute()
            except ResponseError:
                return None  # an id Redis cannot parse (out of range): unknown
        if not found or len(missed) > limit:
            return None
        entries = [(text(raw_id), fields) for raw_id, fields in missed]
        return entries, entries[-1][0] if entries else entry_id
