"""Occupancy: the member counts of the rooms streams here follow, at most once a second.

Counting costs one ``ZCARD`` per followed room per second, whatever the size
of the room or how much it changes: that is what occupancy is for.
"""

from __future__ import annotations

import asyncio

from ..contract import Keys
from ..redis_client import Redis
from ..shards import Router
from ..supervise import Worker
from .scoped import Scopes

#: Seconds between two counts of a room.
INTERVAL = 1.0


class OccupancyPoller:
    def __init__(self, redis: Redis, shards: Router[Keys], scopes: Scopes) -> None:
        """``shards``: each shard's keys (one, on a standalone Redis)."""
        self._redis = redis
        self._shards = shards
        self._scopes = scopes

    async def counts(self, rooms: list[str]) -> dict[str, int]:
        """The member count of each of ``rooms``."""
        if not rooms:
            return {}
        pipe = self._redis.pipeline(transaction=False)
        shards = self._shards
        for room in rooms:
            pipe.zcard(shards[shards.of(room)].room(room).deadlines)
        return dict(zip(rooms, map(int, await pipe.execute()), strict=True))

    async def run(self, worker: Worker) -> None:
        while True:
            if rooms := list(self._scopes.occupancy):
                for room, count in (await self.counts(rooms)).items():
                    self._scopes.count(room, count)
            worker.ok()
            await asyncio.sleep(INTERVAL)
