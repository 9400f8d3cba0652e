"""One shard's webhook loop: take a batch from its streams, post it, ack it.

A pass takes a batch from the presence stream and from up to
``ROOMS_PER_PASS`` indexed rooms, ``STREAMS_PER_CALL`` streams a round trip,
and posts what each round trip took as one request: memory holds at most
``STREAMS_PER_CALL`` x ``PER_STREAM`` events. Each stream has at most one batch
in flight (``streams``), so a client's transitions reach the receiver in
stream order. While a batch is being posted its entries are touched every
``TOUCH_EVERY``, so another server only takes over the batch of one that
stopped.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from typing import Any, Final

from redis.exceptions import RedisError

from ..supervise import Worker
from .payload import Source, body, event
from .sender import Sender
from .streams import GONE, TOUCH_EVERY, Taken, WebhookStreams

log = logging.getLogger(__name__)

#: Entries taken from one stream at a time.
PER_STREAM: Final = 250
#: Streams one round trip takes from; rooms one pass visits at most.
STREAMS_PER_CALL: Final = 10
ROOMS_PER_PASS: Final = 500
#: Seconds between two passes that found nothing to post.
IDLE_WAIT: Final = 0.05
#: Seconds between two log lines about entries trimmed before they were posted.
DROP_LOG_EVERY: Final = 60.0


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
        #: Unix ms of the oldest entry taken and not posted yet; None when none is.
        self.oldest_ms: int | None = None

    async def run(self, worker: Worker) -> None:
        await self._streams.prepare()
        worker.ok()
        while not worker.stopping:
            posted = await self._pass(worker)
            worker.ok()
            if not posted and not worker.stopping:
                await asyncio.sleep(IDLE_WAIT)

    async def _pass(self, worker: Worker) -> bool:
        streams = self._streams
        sources: list[Source] = [streams.global_source] if streams.presence else []
        if streams.rooms:
            rooms, read = await streams.indexed(self._room_start, ROOMS_PER_PASS)
            # The next pass goes on from here; the index shrinks as rooms are delivered.
            self._room_start = 0 if read < ROOMS_PER_PASS else self._room_start + read
            sources += rooms
        posted = False
        for i in range(0, len(sources), STREAMS_PER_CALL):
            if worker.stopping:
                break
            taken = await streams.take(sources[i : i + STREAMS_PER_CALL], PER_STREAM)
            self._count_dropped(taken)
            batch = [t for t in taken if t.entries]
            if batch:
                await self._deliver(batch, worker)
                posted = True
        return posted

    async def _deliver(self, batch: list[Taken], worker: Worker) -> None:
        events: list[dict[str, Any]] = []
        ids: dict[Source, list[bytes]] = {}
        for t in batch:
            events += (event(t.source, entry_id, fields) for entry_id, fields in t.entries)
            ids[t.source] = [entry_id for entry_id, _ in t.entries]
        self.oldest_ms = min(e["time_ms"] for e in events)
        toucher = asyncio.create_task(self._touch(ids))
        try:
            payload = body(events, int(time.time() * 1000))
            if await self._sender.post(payload, len(events), lambda: worker.stopping):
                await self._streams.ack(ids)
        finally:
            toucher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await toucher
            self.oldest_ms = None

    async def _touch(self, ids: dict[Source, list[bytes]]) -> None:
        while True:
            await asyncio.sleep(TOUCH_EVERY)
            try:
                await self._streams.touch(ids)
            except (RedisError, OSError) as exc:
                log.debug("webhook batch not touched: %s", exc)

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
