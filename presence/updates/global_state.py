"""Who is online globally, over every shard: snapshots, watch lists, lookups.

On a standalone Redis this is the one shard's scripts. On a cluster each
shard's snapshot is exact at its own ``presence`` stream's entry, and the
shards' clients are disjoint, so their union is exact at the position made
of those entries (``positions``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

from ..contract import check_id
from ..events import OnlineClient
from ..shards import Router
from ..transitions.scripts import Transitions


class GlobalState:
    def __init__(self, shards: Router[Transitions]) -> None:
        self._shards = shards

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the position they are exact at."""
        if not self._shards.sharded:
            return await self._shards[0].snapshot()
        found = await asyncio.gather(*(t.snapshot() for t in self._shards.items))
        return _union(found)

    async def watched(self, clients: Sequence[str]) -> tuple[str, list[OnlineClient]]:
        """Which of ``clients`` are online, and the position that is exact at."""
        shards = self._shards
        if not shards.sharded:
            return await shards[0].watched(clients)
        by_shard: list[list[str]] = [[] for _ in shards.items]
        for client in clients:
            by_shard[shards.of(client)].append(client)
        pairs = zip(shards.items, by_shard, strict=True)
        found = await asyncio.gather(*(t.watched(c, position_only=not c) for t, c in pairs))
        return _union(found)

    async def online(self) -> list[OnlineClient]:
        """Every online client, sorted by client id."""
        found = await asyncio.gather(*(t.online() for t in self._shards.items))
        return sorted((c for shard in found for c in shard), key=lambda o: o.client)

    async def status(self, client_id: str) -> OnlineClient | None:
        """The client and its server when it is online, else None."""
        check_id(client_id)
        server = await self._shards[self._shards.of(client_id)].server_of(client_id)
        return None if server is None else OnlineClient(client_id, server)

    async def last_seen(self, client_id: str) -> int | None:
        """Unix ms of the client's last OFFLINE within the retention, else None."""
        check_id(client_id)
        return await self._shards[self._shards.of(client_id)].last_seen(client_id)


def _union(found: Sequence[tuple[str, list[OnlineClient]]]) -> tuple[str, list[OnlineClient]]:
    position = ",".join(p for p, _ in found)
    return position, sorted((c for _, shard in found for c in shard), key=lambda o: o.client)
