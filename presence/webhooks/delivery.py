"""One shard's webhook loop: take a batch from its streams, post it, ack it.

A pass takes a batch from the presence stream and from up to
``ROOMS_PER_PASS`` indexed rooms, ``STREAMS_PER_CALL`` streams a round trip
(the presence stream and nine rooms, then ten rooms at a time), and posts
what each round trip took, in requests of at most ``MAX_BODY`` bytes:
memory holds at most ``STREAMS_PER_CALL`` x ``PER_STREAM`` events. Each
stream has at most one batch in flight (``streams``), so a client's
transitions reach the receiver in stream order. While a batch is being
posted its entries are touched every ``TOUCH_EVERY``, so another server only
takes over the batch of one that stopped; each request's entries are
acknowledged once it is posted, or given up (``sender``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Sequence
from functools import partial
from typing import Final

from redis.exceptions import RedisError

from ..entries import text
from ..supervise import Worker
from .payload import Source, body, encode, event, split
from .sender import Outcome, Sender
from .streams import GONE, TOUCH_EVERY, Taken, WebhookStreams

log = logging.getLogger(__name__)

#: Entries taken from one stream at a time.
PER_STREAM: Final = 250
#: Streams one round trip takes from; rooms one pass visits at most.
STREAMS_PER_CALL: Final = 10
ROOMS_PER_PASS: Final = 500
#: A request's body at most, in bytes: a bigger batch goes in several requests.
MAX_BODY: Final = 1 << 20
#: Seconds between two passes that found nothing to post.
IDLE_WAIT: Final = 0.05
#: Seconds between two log lines about entries trimmed before they were posted.
DROP_LOG_EVERY: Final = 60.0
#: Streams whose idle consumers one round trip removes.
FORGET_BATCH: Final = 500


def _dated(events: Sequence[bytes]) -> bytes:
    return body(events, int(time.time() * 1000))


def _ms(entry_id: str) -> int:
    return int(entry_id.partition("-")[0])


class ShardDelivery:
    def __init__(self, streams: WebhookStreams, sender: Sender, label: str = "") -> None:
        self._streams = streams
        self._sender = sender
        self._label = label
        self._room_start = 0
        #: Entries trimmed from their stream before they were posted.
        self.dropped = 0
        #: Indexed room streams found gone (expired, or deleted) before their
        #: entries were all posted: how many entries is unknown.
        self.vanished = 0
        self._vanished_logged = 0
        self._dropped_logged = 0
        self._drop_log_at = 0.0
        #: Unix ms of each stream's oldest entry not acknowledged yet, as this
        #: server's last look at it found it; a stream caught up is absent.
        self._oldest: dict[Source, int] = {}
        #: Streams looked at since the index was last read from its start.
        self._looked: set[Source] = set()
        #: Streams looked at since idle consumers were last removed.
        self._to_forget: set[Source] = set()
        self._forget_at = 0.0

    @property
    def oldest_ms(self) -> int | None:
        """Unix ms of the oldest entry not acknowledged yet that this server's
        last look at each stream found; None when every one was caught up."""
        return min(self._oldest.values(), default=None)

    async def prepare(self) -> None:
        await self._streams.prepare()

    async def run(self, worker: Worker) -> None:
        # Again at every start: Redis may have lost them.
        await self._streams.prepare()
        worker.ok()
        while not worker.stopping:
            posted = await self._pass(worker)
            await self._forget_idle()
            worker.ok()
            if not posted and not worker.stopping:
                await asyncio.sleep(IDLE_WAIT)

    async def _pass(self, worker: Worker) -> bool:
        streams = self._streams
        sources: list[Source] = [streams.global_source] if streams.presence else []
        whole = True  # this pass ends a round through the index
        if streams.rooms:
            rooms, read = await streams.indexed(self._room_start, ROOMS_PER_PASS)
            # The next pass goes on from here; the index shrinks as rooms are delivered.
            whole = read < ROOMS_PER_PASS
            self._room_start = 0 if whole else self._room_start + read
            sources += rooms
        posted = False
        for i in range(0, len(sources), STREAMS_PER_CALL):
            if worker.stopping:
                return posted
            taken = await streams.take(sources[i : i + STREAMS_PER_CALL], PER_STREAM)
            self._count_dropped(taken)
            self._looked_at(taken)
            batch = [t for t in taken if t.entries]
            if batch:
                await self._deliver(batch, worker)
                posted = True
        if whole:
            # A room no look found this round left the index (another server
            # posted it): it is behind no more as far as this server knows.
            for source in self._oldest.keys() - self._looked:
                del self._oldest[source]
            self._looked.clear()
        return posted

    def _looked_at(self, taken: list[Taken]) -> None:
        for t in taken:
            self._looked.add(t.source)
            if t.oldest:
                self._oldest[t.source] = _ms(t.oldest)
            else:
                self._oldest.pop(t.source, None)
            if t.state != GONE:
                self._to_forget.add(t.source)

    async def _deliver(self, batch: list[Taken], worker: Worker) -> None:
        sources: list[Source] = []
        ids: list[bytes] = []
        events: list[bytes] = []
        for t in batch:
            for entry_id, fields in t.entries:
                sources.append(t.source)
                ids.append(entry_id)
                events.append(encode(event(t.source, entry_id, fields)))
        in_flight = {t.source: [entry_id for entry_id, _ in t.entries] for t in batch}
        toucher = asyncio.create_task(self._touch(in_flight))
        try:
            for part in split(events, MAX_BODY):
                chunk = events[part.start : part.stop]
                sent = partial(_dated, chunk)
                outcome = await self._sender.post(sent, len(chunk), lambda: worker.stopping)
                if outcome is Outcome.STOPPED:
                    return  # pending: another server takes it over
                done: dict[Source, list[bytes]] = {}
                for i in part:
                    done.setdefault(sources[i], []).append(ids[i])
                await self._streams.ack(done)
                # What of the batch is left is its streams' oldest now.
                for i in range(part.stop, len(ids)):
                    if sources[i] in done:
                        self._oldest[sources[i]] = _ms(text(ids[i]))
                        done.pop(sources[i])
        finally:
            toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await toucher

    async def _touch(self, ids: dict[Source, list[bytes]]) -> None:
        while True:
            await asyncio.sleep(TOUCH_EVERY)
            try:
                await self._streams.touch(ids)
            except (RedisError, OSError) as exc:
                log.debug("webhook batch not touched: %s", exc)

    async def _forget_idle(self) -> None:
        """Every half ``forget_after``: remove the consumers (servers gone for
        good) idle that long with nothing pending, from the groups of the
        streams looked at since the last time."""
        now = time.monotonic()
        if now < self._forget_at:
            return
        self._forget_at = now + self._streams.forget_after / 2
        streams, self._to_forget = list(self._to_forget), set()
        removed: set[str] = set()
        for i in range(0, len(streams), FORGET_BATCH):
            removed.update(await self._streams.forget(streams[i : i + FORGET_BATCH]))
        if removed:
            log.info(
                "webhook%s: removed consumers idle for %g s with nothing pending: %s",
                self._label,
                self._streams.forget_after,
                ", ".join(sorted(removed)),
            )

    def _count_dropped(self, taken: list[Taken]) -> None:
        for t in taken:
            self.dropped += t.dropped
            if t.state == GONE and t.source.room:
                self.vanished += 1
            elif t.state == GONE and self._streams.presence:
                # The presence stream or its group went (a Redis that lost its data).
                raise RedisError("the webhook group on the presence stream is gone")
        now = time.monotonic()
        news = self.dropped > self._dropped_logged or self.vanished > self._vanished_logged
        if news and now - self._drop_log_at >= DROP_LOG_EVERY:
            log.warning(
                "webhook%s: %d transitions trimmed from their streams before they were "
                "posted (%d in all), %d room streams gone before they were all posted "
                "(%d in all); raise the streams' caps, or mend the receiver",
                self._label,
                self.dropped - self._dropped_logged,
                self.dropped,
                self.vanished - self._vanished_logged,
                self.vanished,
            )
            self._dropped_logged, self._vanished_logged = self.dropped, self.vanished
            self._drop_log_at = now
