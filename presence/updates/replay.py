"""Resuming an SSE stream after ``Last-Event-ID``: the missed entries, from the stream.

The entry the client last saw must still be in the presence stream: then every
entry after it is too, and replaying them is gapless. When it is gone (trimmed,
Redis lost its data) or unknown, or more entries were missed than a
connection may lag, there is nothing exact to replay and the caller sends a
fresh snapshot instead.
"""

from __future__ import annotations

import asyncio
import re
from dataclasses import dataclass

from redis.exceptions import ResponseError

from ..redis_client import Redis, unparsed_streams
from ..wire import Delivery, parse_delivery, text

_ENTRY_ID = re.compile(r"[0-9]{1,20}-[0-9]{1,20}")
#: Replays read Redis per connection: a reconnect storm takes turns.
CONCURRENT = 16


@dataclass(frozen=True, slots=True)
class Replay:
    """The entries after a resume position, and the position they end at."""

    deliveries: list[Delivery]
    position: str


def valid_entry_id(value: str) -> bool:
    return _ENTRY_ID.fullmatch(value) is not None


class Replayer:
    def __init__(self, redis: Redis, stream: str, limit: int) -> None:
        self._redis = unparsed_streams(redis)
        self._stream = stream
        self._limit = limit
        self._turns = asyncio.Semaphore(CONCURRENT)

    async def after(self, entry_id: str) -> Replay | None:
        """Every entry after ``entry_id``, or None when that cannot be exact."""
        if not valid_entry_id(entry_id) or entry_id == "0-0":
            return None
        async with self._turns:
            pipe = self._redis.pipeline(transaction=False)
            pipe.xrange(self._stream, entry_id, entry_id, count=1)
            pipe.xrange(self._stream, f"({entry_id}", "+", count=self._limit + 1)
            try:
                found, missed = await pipe.execute()
            except ResponseError:
                return None  # an id Redis cannot parse (out of range): unknown
        if not found or len(missed) > self._limit:
            return None
        deliveries = []
        for raw_id, fields in missed:
            delivery = parse_delivery(text(raw_id), fields)
            if delivery is not None:
                deliveries.append(delivery)
        position = text(missed[-1][0]) if missed else entry_id
        return Replay(deliveries, position)
