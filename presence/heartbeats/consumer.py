"""Heartbeats in: the consumer group applies each entry once, across all servers.

Entries come from outside (other platforms), so each is validated; a bad one is
acknowledged, counted and logged, and never stops the loop.

The script that applies a heartbeat also acknowledges its entry, so an entry
is applied and acknowledged, or neither. Entries stay pending when a server
dies or freezes after reading them, or when Redis fails their call: then
``claims`` takes them over.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from ..contract import CONSUMER_GROUP
from ..entries import StreamEntry, heartbeat_lines, stream_entries, text
from ..logs import Throttle
from ..redis_client import BLOCK_MS, Redis, unparsed_streams
from ..settings import Settings
from ..supervise import Worker
from ..transitions.scripts import CAME_ONLINE, FAILED, STALE, Transitions

log = logging.getLogger(__name__)

#: Entries per read, adapted between these: small while the consumer keeps
#: up, so that a batch's pipeline never holds Redis (and the ONLINE behind
#: it) for long; doubled each time a read comes back full, because under
#: load every loop iteration is long and each read must carry more.
BATCH = 200
MAX_BATCH = 2000
#: Batches applied at once: one in Redis while the next is prepared.
IN_FLIGHT = 2
#: Heartbeats per script call: a call holds Redis for its whole duration.
SCRIPT_BATCH = 100
MEMORY_POLL = 0.02
#: A flood of malformed entries is logged at most once per this many seconds.
MALFORMED_LOG_EVERY = 10.0


class HeartbeatConsumer:
    def __init__(self, redis: Redis, settings: Settings, transitions: Transitions) -> None:
        self._redis = redis
        self._streams = unparsed_streams(redis)
        self._transitions = transitions
        self._stream = settings.keys.heartbeat
        self._consumer = settings.server_id
        self._ttl_ms = settings.ttl_ms
        # fakeredis answers XREADGROUP BLOCK at once, so the in-process Redis is polled.
        self._block: int | None = None if settings.in_memory else BLOCK_MS
        self._count = BATCH
        self.applied = 0
        self.online = 0
        self.stale = 0
        self.malformed = 0
        self.failed = 0
        self._malformed_log = Throttle(MALFORMED_LOG_EVERY)

    async def run(self, worker: Worker) -> None:
        await self.ensure_group()  # at every start: Redis may have lost it
        # Entries this consumer read but did not acknowledge before a restart,
        # each once: one that fails again stays pending, for the claimer to retry.
        after = "0"
        while entries := await self._read(after, block=None):
            await self.apply(entries)
            after = entries[-1][0].decode()
        worker.ok()
        # The next batch is asked for before this one's scripts are sent, so
        # Redis answers it first: Redis runs one batch's scripts on its core
        # while this process parses and packs the next on its own.
        reading: asyncio.Task[list[StreamEntry]] | None = None
        applying: set[asyncio.Task[None]] = set()
        try:
            while not worker.stopping:
                if reading is None:
                    reading = asyncio.create_task(self._read(">", block=self._block))
                try:
                    entries = await reading
                except ResponseError as exc:
                    if "NOGROUP" not in str(exc):
                        raise
                    reading = None
                    await self.ensure_group()  # Redis lost its data
                    continue
                reading = None
                if entries:
                    reading = asyncio.create_task(self._read(">", block=self._block))
                    applying.add(asyncio.create_task(self.apply(entries)))
                    if len(applying) >= IN_FLIGHT:
                        await asyncio.wait(applying, return_when=asyncio.FIRST_COMPLETED)
                elif self._block is None:
                    await asyncio.sleep(MEMORY_POLL)
                for task in [t for t in applying if t.done()]:
                    applying.discard(task)
                    task.result()  # a failed batch stays pending, and the loop restarts
                worker.ok()
        finally:
            # Unacknowledged entries stay pending: nothing is lost by cancelling.
            pending: list[asyncio.Task[Any]] = [*applying, *([reading] if reading else [])]
            for task in pending:
                task.cancel()
            await asyncio.gather(*pending, return_exceptions=True)

    async def ensure_group(self) -> None:
        """Create the consumer group unless it exists."""
        # Start one TTL back, not at "$": heartbeats sent while the group was
        # missing (Redis restarted without data) still count; older ones would
        # be ignored as stale anyway.
        seconds, micros = await self._redis.time()
        start_ms = max(0, seconds * 1000 + micros // 1000 - self._ttl_ms)
        try:
            await self._redis.xgroup_create(
                self._stream, CONSUMER_GROUP, id=f"{start_ms}-0", mkstream=True
            )
        except ResponseError as exc:
            if "BUSYGROUP" not in str(exc):
                raise
        else:
            log.info("created consumer group %r on %r", CONSUMER_GROUP, self._stream)

    async def _read(self, start: str, block: int | None) -> list[StreamEntry]:
        count = self._count
        reply = await self._streams.xreadgroup(
            CONSUMER_GROUP, self._consumer, {self._stream: start}, count=count, block=block
        )
        entries = stream_entries(reply)
        if len(entries) == count:
            self._count = min(MAX_BATCH, count * 2)  # behind: take more at a time
        elif len(entries) < count // 2:
            self._count = max(BATCH, count // 2)
        return entries

    async def apply(self, entries: Sequence[StreamEntry]) -> None:
        """Apply heartbeat entries; those Redis fails stay pending."""
        good, bad = heartbeat_lines(entries)

        def fill(pipe: Pipeline) -> None:
            # Each script call acknowledges its own entries.
            for start in range(0, len(good), SCRIPT_BATCH):
                self._transitions.heartbeats(pipe, good[start : start + SCRIPT_BATCH])
            if bad:
                pipe.xack(self._stream, CONSUMER_GROUP, *(entry_id for entry_id, _ in bad))

        calls = -(-len(good) // SCRIPT_BATCH)
        outcomes: list[int] = []
        errors: list[str] = []
        for reply in (await self._transitions.execute(fill))[:calls]:
            if isinstance(reply, Exception):  # the whole call: a batch's worth
                errors.append(str(reply))
                outcomes += [FAILED] * SCRIPT_BATCH
                continue
            codes = [c for c in reply if isinstance(c, int)]
            errors += [text(e) for e in reply[len(codes) :]]
            outcomes += codes
        outcomes = outcomes[: len(good)]
        failed = outcomes.count(FAILED)
        self.applied += len(good) - failed
        self.online += outcomes.count(CAME_ONLINE)
        self.stale += outcomes.count(STALE)
        if failed:
            # Not acknowledged: claimed and applied again until they apply or go stale.
            self.failed += failed
            log.warning(
                "%d heartbeat(s) failed in Redis, left pending to retry: %s", failed, errors[0]
            )
        if bad:
            self.malformed += len(bad)
            self._log_malformed(len(bad), *bad[-1])

    def _log_malformed(self, count: int, entry_id: bytes, why: str) -> None:
        if due := self._malformed_log.count(count):
            log.warning(
                "skipped %d malformed heartbeat entr%s (last %s: %s)",
                due,
                "y" if due == 1 else "ies",
                entry_id.decode(),
                why,
            )
