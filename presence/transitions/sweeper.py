"""OFFLINE at the deadline: the sweeper.

Redis expires keys lazily and its ``expired`` events can come tens of seconds
late, or never while nobody listens. So expiry is the sweeper's alone: it
polls the deadline index, which is timely, and it can wait when deadlines
passed only because Redis was unreachable or the heartbeat consumers are
behind. Every OFFLINE check runs the same idempotent script, so any number of
sweepers and listeners, on any number of servers, publish each OFFLINE once.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time

from redis.asyncio.client import Pipeline

from ..entries import text
from ..supervise import Outage, Worker
from .scripts import SweptTooLate, Transitions

log = logging.getLogger(__name__)

SWEEP_INTERVAL = 0.1
SWEEP_BATCH = 500
#: Rooms visited per pass, at most.
ROOM_BATCH = 100
#: Clients per OFFLINE script call.
SCRIPT_BATCH = 100


class Sweeper:
    """Publishes OFFLINE for every client whose deadline has passed.

    After losing Redis it waits ``grace`` seconds (one heartbeat interval)
    once Redis answers again: clients that stayed connected could not be
    heartbeated meanwhile, and their next heartbeat refreshes them without
    any event. Those that left during the outage go OFFLINE after the grace.

    It waits the same after any outage another worker of this process saw
    (``outage``), its own calls answered or not: on a cluster, a shard's
    sweeper may reach its primary while every heartbeat fails (the cluster
    is down while another primary fails over), and a short outage may fall
    between two passes. And after a pass whose reading of what is due took
    longer than ``patience``: redis-py's cluster client retries a cluster
    that is down for as long as a promotion takes, so the call succeeds,
    late, when every server's heartbeats have just failed for as long.
    """

    def __init__(
        self,
        transitions: Transitions,
        grace: float,
        interval: float = SWEEP_INTERVAL,
        outage: Outage | None = None,
        patience: float = math.inf,
    ) -> None:
        self._transitions = transitions
        self._grace = grace
        self._interval = interval
        self._outage = outage or Outage()
        self._outages = self._outage.count
        self._patience = patience
        # Set by a pass that read what is due too late to act on it.
        self._late = False
        #: Passes that found deadlines passed but read them too late.
        self.held_back = 0
        self._ran = False
        self.published = 0
        #: Room OFFLINEs published (members whose deadline passed).
        self.room_published = 0
        #: Seconds between the oldest overdue deadline and now, at the last pass.
        self.lag = 0.0

    async def run(self, worker: Worker) -> None:
        if self._ran:
            await self._transitions.due(0)  # Redis answers again
            worker.ok()
            await asyncio.sleep(self._grace)
        self._ran = True
        self._outages = self._outage.count
        while True:
            if self._outage.active or self._outage.count != self._outages:
                self._outages = self._outage.count
                worker.ok()
                await asyncio.sleep(self._grace)
                continue
            due, published = await self.sweep_once()
            rooms, room_published = await self.sweep_rooms()
            worker.ok()
            if self._late:
                self._late = False
                await asyncio.sleep(self._grace)
                continue
            # A full batch that published means more are due: go on at once.
            more = (due >= SWEEP_BATCH and published) or (rooms >= ROOM_BATCH and room_published)
            if not more:
                await asyncio.sleep(self._interval)

    async def sweep_once(self) -> tuple[int, int]:
        """One pass; returns how many clients were due and how many OFFLINEs it published."""
        asked = time.monotonic()
        now, due = await self._transitions.due(SWEEP_BATCH)
        self.lag = (now - due[0][1]) / 1000 if due else 0.0
        if due and time.monotonic() - asked > self._patience:
            self._hold_back()
            return len(due), 0
        published = await offline(self._transitions, [c for c, _ in due]) if due else 0
        self.published += published
        return len(due), published

    async def sweep_rooms(self) -> tuple[int, int]:
        """One pass over the rooms due; returns how many were visited and how
        many OFFLINEs it published."""
        try:
            published, visited, failed, failure = await self._transitions.sweep_rooms(
                ROOM_BATCH, patience=self._patience
            )
        except SweptTooLate:
            self._hold_back()
            return 0, 0
        if failed:
            log.warning("%d room(s) failed in Redis while swept: %s", failed, failure)
        self.room_published += published
        return visited, published

    def _hold_back(self) -> None:
        if not self._late:
            self.held_back += 1
            log.info(
                "Redis answered the deadline sweep late (a cluster failing over?): "
                "waiting %.1f s for heartbeats before any OFFLINE",
                self._grace,
            )
        self._late = True


async def offline(transitions: Transitions, clients: list[str], *, deleted: bool = False) -> int:
    """Run the OFFLINE script for each client; returns how many were published.

    ``deleted`` (the keyspace listeners): only keys gone before their deadline
    count. A key that expired while the listener's calls were retried (a
    cluster failing over) is the sweeper's, which waits for heartbeats first.
    """

    def fill(pipe: Pipeline) -> None:
        for start in range(0, len(clients), SCRIPT_BATCH):
            transitions.offline(pipe, clients[start : start + SCRIPT_BATCH], deleted=deleted)

    published, failed, failure = 0, 0, ""
    for reply in await transitions.execute(fill):
        if isinstance(reply, Exception):
            failed, failure = failed + 1, str(reply)
            continue
        published += int(reply[0])
        if reply[1]:
            failed, failure = failed + int(reply[1]), text(reply[2])
    if failed:
        log.warning("%d OFFLINE check(s) failed in Redis: %s", failed, failure)
    return published
