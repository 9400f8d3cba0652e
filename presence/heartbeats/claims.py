"""Heartbeat entries left pending, taken over; consumers gone for good, removed.

Every server checks the group's pending entries every half claim delay. An
entry found pending for longer than the delay in two checks in a row is
claimed and applied here (the heartbeat script acknowledges one that has
gone stale without applying it): its consumer stopped, froze or lost Redis,
or Redis failed it. A Redis stall makes every entry look old once, but the
calls their consumers queued behind the stall acknowledge them right after,
so a healthy server's entries are not claimed. Both the claim and the
removal of idle consumers are scripts: one atomic step each.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter

from redis.asyncio.client import Pipeline

from ..entries import text
from ..settings import Settings
from ..supervise import Worker
from ..transitions.scripts import Transitions
from .consumer import HeartbeatConsumer

log = logging.getLogger(__name__)

#: Entries found pending too long per check.
CLAIM_COUNT = 1000


class Claimer:
    def __init__(
        self, settings: Settings, transitions: Transitions, consumer: HeartbeatConsumer
    ) -> None:
        self._transitions = transitions
        self._consumer_loop = consumer
        self._consumer = settings.server_id
        self._claim_after = settings.claim_delay
        self._forget_ms = round(settings.forget_after * 1000)
        #: Entries other consumers left pending, applied here.
        self.claimed = 0
        #: This server's own entries that Redis failed, applied again.
        self.retried = 0
        #: Checks made.
        self.checks = 0
        #: Entries found pending too long at the last check -> their consumer.
        self._found: dict[bytes, str] = {}

    async def run(self, worker: Worker) -> None:
        # What was found before a failure (an outage) is no first sighting now.
        self._found = {}
        while True:
            await asyncio.sleep(self._claim_after / 2)
            await self.reclaim()
            worker.ok()

    async def reclaim(self) -> None:
        """Apply entries left pending (by stopped consumers, or failed in Redis);
        forget consumers gone for good."""
        idle_ms = round(self._claim_after * 1000)
        owners = self._found

        def claim(pipe: Pipeline) -> None:
            self._transitions.claim(pipe, self._consumer, idle_ms, CLAIM_COUNT, list(owners))

        entries, deleted, flat = await self._transitions.run(claim)
        self.checks += 1
        self._found = {flat[i]: text(flat[i + 1]) for i in range(0, len(flat), 2)}
        if deleted:
            log.info("acknowledged %d pending heartbeat entries deleted from the stream", deleted)
        if entries:
            by_owner = Counter(owners[e[0]] for e in entries if e[0] in owners)
            retried = by_owner.pop(self._consumer, 0)
            self.retried += retried
            self.claimed += len(entries) - retried
            for owner, count in by_owner.items():
                log.warning(
                    "claimed %d heartbeat entries %s read but left pending for over %.2f s "
                    "in two checks %.2f s apart (that server stopped, froze or lost Redis); "
                    "applying them here",
                    count,
                    owner,
                    self._claim_after,
                    self._claim_after / 2,
                )
            if retried:
                log.warning(
                    "applying again %d of this server's heartbeat entries left pending "
                    "(Redis failed them, or this server was stalled)",
                    retried,
                )
            await self._consumer_loop.apply(entries)

        def forget(pipe: Pipeline) -> None:
            self._transitions.forget(pipe, self._consumer, self._forget_ms)

        removed = await self._transitions.run(forget)
        for i in range(0, len(removed), 2):
            log.info(
                "removed consumer %r: idle for %d s, nothing pending",
                text(removed[i]),
                int(removed[i + 1]) // 1000,
            )
