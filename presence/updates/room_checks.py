"""The room reader's checks that each room's position is still in its stream,
and the rooms it leaves out because Redis cannot read them.

A position is checked before the room's entries are routed, so that entries
after one the stream lost never reach its streams ahead of their reset: in
the read's own round trip once a second (an idle room's loss shows within
its next turns), or just after it for a room whose read brought entries.
Checking every room with every read cost more than the read itself.
"""

from __future__ import annotations

import logging
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import ClusterDownError, ResponseError, TryAgainError

from .scoped import Scopes

log = logging.getLogger(__name__)

#: Seconds between two checks of a room's position when it brings no entries.
CHECK_EVERY = 1.0
#: Seconds a room whose stream Redis cannot read is left out of the reads.
ASIDE_SECONDS = 10.0


class RoomChecks:
    def __init__(self, scopes: Scopes) -> None:
        self._scopes = scopes
        #: Room -> when (monotonic) its position is checked next.
        self._next: dict[str, float] = {}
        #: Room -> until when (monotonic) it is left out of the reads.
        self._aside: dict[str, float] = {}

    def readable(self, room: str, now: float) -> bool:
        return self._aside.get(room, 0.0) <= now

    def due(self, rooms: list[str], now: float) -> list[str]:
        """Those of ``rooms`` whose position is to be checked with this read."""
        return [r for r in rooms if self._next.get(r, 0.0) <= now]

    @staticmethod
    def queue(pipe: Pipeline, checked: list[tuple[bytes, str]]) -> None:
        """Queue the check of each (stream key, position): its entry, if any."""
        for key, position in checked:
            pipe.xrange(key, position, position, count=1)

    def lost(
        self, rooms: list[str], found: list[Any], reading: dict[str, str], now: float
    ) -> set[str]:
        """Of ``rooms``, checked with replies ``found``, those whose position is
        gone; one Redis cannot read is set aside."""
        lost: set[str] = set()
        for room, result in zip(rooms, found, strict=True):
            if isinstance(result, (ClusterDownError, TryAgainError)):
                raise result  # the cluster is away, not the room: an outage
            if isinstance(result, ResponseError):
                self._set_aside(room, str(result), now)
            elif isinstance(result, Exception):
                raise result
            else:
                self._next[room] = now + CHECK_EVERY
                if reading[room] != "0-0" and not result:
                    lost.add(room)
        return lost

    def forget(self, room: str) -> None:
        self._next.pop(room, None)
        self._aside.pop(room, None)

    def _set_aside(self, room: str, error: str, now: float) -> None:
        """Left out of the reads for a while; its streams' fresh snapshots fail,
        so they end and reconnect to a 503 naming the room."""
        if self._aside.get(room, 0.0) <= now:
            log.warning(
                "room %s cannot be read from Redis, retrying in %.0f s: %s",
                room,
                ASIDE_SECONDS,
                error,
            )
            self._scopes.resync_room(room)
        self._aside[room] = now + ASIDE_SECONDS
