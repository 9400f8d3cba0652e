"""The one log this process's global streams and ``changes()`` listeners read.

Deliveries go to one shared, bounded log, not to a queue per subscriber. Each
batch the reader delivers becomes one segment whose frames are joined once,
so a subscriber's read is a copy of the segments it has not seen (minus the
frames about its own client, when it has some): its cost does not grow with
the number of events in them. Memory is one log whatever the number of
connections.

Liveness comes before throughput (the heartbeat consumer runs on this event
loop too): one fan-out task wakes the subscribers a ``WAKE_GROUP`` at a
time and yields between groups, so a burst is spread over many short loop
iterations instead of one that holds everything else back. A subscriber
woken late reads every segment it missed at once: under load, fan-out
coalesces instead of queueing. One that falls off the log's start gets a
fresh snapshot (``connections`` drops it if it also stopped reading).
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..entries import Delivery
from ..positions import Seen, behind, later, seen, stream_position
from ..supervise import Worker
from .connections import Connection, Resync

#: Subscribers woken per loop iteration.
WAKE_GROUP = 128
#: Bytes of segments one write takes, at most (or one segment).
WRITE_BYTES = 32 * 1024


@dataclass(slots=True)
class Segment:
    """One batch of deliveries, its frames joined once for every subscriber."""

    #: Sequence number of its first delivery.
    start: int
    deliveries: list[Delivery]
    data: bytes = field(init=False)
    clients: frozenset[str] = field(init=False)
    #: The shard whose stream its entries are from (a batch is one shard's),
    #: and the positions of its first and last entries there.
    shard: int = field(init=False)
    first: tuple[int, int] = field(init=False)
    last: tuple[int, int] = field(init=False)
    #: Sharded, where its last event's id says every shard stood.
    base: Seen = field(init=False)

    def __post_init__(self) -> None:
        self.data = b"".join(d.frame for d in self.deliveries)
        self.clients = frozenset(d.client for d in self.deliveries)
        self.shard = self.deliveries[0].shard
        self.first = stream_position(self.deliveries[0].id)
        self.last = stream_position(self.deliveries[-1].id)
        last = self.deliveries[-1].event_id
        self.base = seen(last) if "," in last else ()

    @property
    def end(self) -> int:
        return self.start + len(self.deliveries)

    def frames(self, exclude: str | None, after: Seen | None, start: str = "") -> bytes:
        """The frames, but those about ``exclude`` and those a stream that has
        seen ``after`` (position ``start``) had; sharded, ids behind ``start``
        in some shard are sent as the later of the two."""
        since = None if after is None else after[self.shard]
        if since is not None:
            if self.last <= since:
                return b""
            if self.base and behind(self.base, after):  # type: ignore[arg-type]
                return b"".join(
                    _with_id(d, later(d.event_id, start))
                    for d in self.deliveries
                    if d.client != exclude and stream_position(d.id) > since
                )
            if self.first > since:
                since = None
        if since is None and (exclude is None or exclude not in self.clients):
            return self.data
        return b"".join(
            d.frame
            for d in self.deliveries
            if d.client != exclude and (since is None or stream_position(d.id) > since)
        )


def _with_id(delivery: Delivery, event_id: str) -> bytes:
    frame = delivery.frame
    return b"id: %b%b" % (event_id.encode(), frame[frame.index(b"\n") :])


class Subscriber(Connection):
    """One SSE connection or in-process listener, reading the shared log."""

    __slots__ = ("_local", "cursor")

    def __init__(
        self,
        local: DeliveryLog,
        client: str | None,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(client, alive=alive, abort=abort, buffered=buffered)
        #: Sequence number of the next delivery to read.
        self.cursor = local.end
        self._local = local

    def behind(self) -> bool:
        return self.cursor < self._local.start

    async def segments(self) -> list[Segment]:
        """The segments not read yet, once there are some (and the connection
        has drained what it had to send); empty once closed.

        Raises ``Resync`` (once) when it may have missed entries.
        """
        if not await self._ready(lambda: self.cursor < self._local.end):
            return []
        if self.cursor < self._local.start:
            self._local.resets += 1  # it fell behind: a snapshot, not a backlog
            self.stale = True
        if self.stale:
            self.stale = False
            self.cursor = self._local.end
            raise Resync
        found = self._local.segments_from(self.cursor)
        self.cursor = found[-1].end
        return found

    async def get_many(self) -> list[Delivery]:
        """The next deliveries not about this client; empty once closed.

        Raises ``Resync`` (once) when it may have missed entries.
        """
        while batch := await self.segments():
            deliveries = [d for s in batch for d in s.deliveries if d.client != self.client]
            if deliveries:
                return deliveries
        return []


class DeliveryLog:
    """Deliveries for this process's global streams and ``changes()`` listeners."""

    def __init__(self, backlog: int = 1024) -> None:
        self._backlog = backlog
        self._segments: deque[Segment] = deque()
        #: Sequence number one past the newest delivery.
        self.end = 0
        self._readers: set[Subscriber] = set()
        #: Subscribers sent a fresh snapshot because they fell behind the log.
        self.resets = 0
        self._delivered = asyncio.Event()

    @property
    def start(self) -> int:
        """Sequence number of the oldest delivery still in the log."""
        return self._segments[0].start if self._segments else self.end

    @contextmanager
    def reading(self, subscriber: Subscriber) -> Iterator[None]:
        """Wake ``subscriber`` for new deliveries while the block runs."""
        self._readers.add(subscriber)
        try:
            yield
        finally:
            self._readers.discard(subscriber)

    def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Append a batch to the log; the fan-out wakes the subscribers."""
        if not deliveries:
            return
        self._segments.append(Segment(self.end, list(deliveries)))
        self.end += len(deliveries)
        # Keep at least the backlog: whole segments go once it holds more without them.
        while self.end - self._segments[0].end >= self._backlog:
            self._segments.popleft()
        self._delivered.set()

    def segments_from(self, cursor: int) -> list[Segment]:
        """The segments from sequence number ``cursor`` on (a segment's start), at
        least one and up to about ``WRITE_BYTES``: one write's worth."""
        first = len(self._segments)
        while first > 0 and self._segments[first - 1].end > cursor:
            first -= 1
        found: list[Segment] = []
        size = 0
        for index in range(first, len(self._segments)):
            segment = self._segments[index]
            if found and size + len(segment.data) > WRITE_BYTES:
                break
            found.append(segment)
            size += len(segment.data)
        return found

    async def fan_out(self, worker: Worker) -> None:
        """Wake the subscribers after each delivery, a group per loop iteration."""
        while True:
            await self._delivered.wait()
            self._delivered.clear()
            subscribers = [s for s in self._readers if s.cursor < self.end]
            for start in range(0, len(subscribers), WAKE_GROUP):
                for subscriber in subscribers[start : start + WAKE_GROUP]:
                    subscriber.wake()
                await asyncio.sleep(0)
            worker.ok()
