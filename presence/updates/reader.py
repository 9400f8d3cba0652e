"""Presence out: one reader of the presence stream per process, fanned out in memory.

The reader starts at the stream's end (never its beginning) and keeps its
position across reconnects. With each read it checks that the position read
from is still in the stream; if not, entries it never saw may be lost, and
every subscriber that follows the stream (global streams, watch lists) gets
a fresh snapshot instead, once: the reader then goes on from the stream's
newest entry. A stream of rooms alone is not reset: it lost nothing. Each
event is SSE-encoded once, then offered to every subscriber except those of
the client it is about.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from ..entries import parse_delivery, stream_entries, text
from ..positions import Positions, stream_position
from ..redis_client import BLOCK_MS, Redis, unparsed_streams
from ..settings import Settings
from ..supervise import Worker
from .connections import Connections
from .delivery_log import DeliveryLog
from .scoped import Scopes

log = logging.getLogger(__name__)

BATCH = 1000


class PresenceReader:
    def __init__(
        self,
        redis: Redis,
        settings: Settings,
        local: DeliveryLog,
        scopes: Scopes,
        connections: Connections,
        shard: int = 0,
        positions: Positions | None = None,
    ) -> None:
        """On a cluster, one reader per shard: ``shard``'s, advancing ``positions``."""
        self._redis = unparsed_streams(redis)
        self._shard = shard
        self._positions = positions or Positions(1)
        self._stream = settings.keys.presence
        self._local = local
        self._connections = connections
        self._scopes = scopes
        self.position: str | None = None
        self.delivered = 0
        self.resyncs = 0
        #: Read round trips made, for tests and metrics.
        self.reads = 0
        # A position found missing and resynced already: read after it, unchecked.
        self._gone: str | None = None
        #: Seconds between the newest entry of the last batch and its delivery.
        self.lag = 0.0
        # A batch larger than the log would drop subscribers that are caught up.
        self._count = min(BATCH, settings.queue_size)

    async def start(self) -> None:
        """Take the current end of the stream as the first position to read after."""
        last: Any = await self._redis.xrevrange(self._stream, count=1)
        self.position = text(last[0][0]) if last else "0-0"
        self._positions.advance(self._shard, self.position)

    async def run(self, worker: Worker) -> None:
        if self.position is None:
            await self.start()
        worker.ok()
        while not worker.stopping:
            position = self.position or "0-0"
            # Is the position still there? Asked with every read, not only after
            # a reconnect (redis-py may have reconnected to a restarted Redis
            # without telling anyone), and in the same round trip.
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrange(self._stream, position, position, count=1)
            pipe.xread({self._stream: position}, count=self._count, block=BLOCK_MS)
            found, reply = await pipe.execute()
            lost = position not in ("0-0", self._gone) and not found
            self.reads += 1
            worker.ok()
            batch = []
            newest = position
            shard = self._shard
            # Sharded, each event's id says where every shard's reader stood:
            # the others' entries up to there are in the log before it.
            ids = list(self._positions.ids) if len(self._positions.ids) > 1 else None
            for entry_id, fields in stream_entries(reply):
                newest = entry_id.decode()
                if ids is None:
                    delivery = parse_delivery(newest, fields)
                else:
                    ids[shard] = newest
                    delivery = parse_delivery(newest, fields, shard, ",".join(ids))
                if delivery is None:
                    log.warning("ignored malformed presence entry %s", newest)
                    continue
                batch.append(delivery)
            self.position = newest
            if lost:
                # Trimmed, deleted, or Redis restarted without its data: what this
                # process delivered may no longer add up, so everyone following
                # it resyncs.
                log.warning(
                    "presence stream lost entries after %s: sending fresh snapshots", position
                )
                self.resyncs += 1
                # Once: the reader goes on after the newest entry (with none
                # left, after the position it knows is gone), and the snapshots,
                # asked for only after this, start there or later.
                last: Any = await self._redis.xrevrange(self._stream, count=1)
                self.position = text(last[0][0]) if last else newest
                self._gone = None if last else self.position
                self._positions.advance(shard, self.position)
                self._connections.resync_presence()
                continue
            self._local.deliver(batch)
            self._scopes.deliver(batch)
            if newest != position:
                self._positions.advance(shard, newest)
            self.delivered += len(batch)
            self.lag = max(0.0, time.time() - stream_position(newest)[0] / 1000) if batch else 0.0
