"""The subscribers of this process and the one log they read deliveries from.

Plain synchronous state, touched only from the event loop; Redis is never
called from here.

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
coalesces instead of queueing.

A subscriber that falls off the log's start is not closed: it gets a fresh
snapshot instead of the events it missed. Only one that has also stopped
reading (its pending write drained nothing for ``STALL_TIMEOUT``) is
dropped: a stalled reader costs a reconnect, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Literal

from ..entries import Delivery, stream_position
from ..supervise import Worker

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 0.25
#: Subscribers woken per loop iteration.
WAKE_GROUP = 128
#: Bytes of segments one write takes, at most (or one segment).
WRITE_BYTES = 32 * 1024
#: A subscriber with more than this still to send waits for it to drain
#: before it reads more: per connection, memory stays within about twice it
#: (and the kernel's buffer), and a slow reader's events coalesce in the
#: shared log instead.
BUFFERED_BYTES = 32 * 1024
#: Seconds a pending write may drain nothing before a subscriber that fell
#: behind is taken for one that stopped reading, and dropped (the default of
#: ``Settings.stall_timeout``).
STALL_TIMEOUT = 10.0

CloseReason = Literal["closed", "overflow", "gone", "shutdown"]


class Resync(Exception):
    """This subscriber may have missed entries (a stream it follows lost some,
    or it fell behind): it needs a fresh snapshot."""


@dataclass(slots=True)
class Segment:
    """One batch of deliveries, its frames joined once for every subscriber."""

    #: Sequence number of its first delivery.
    start: int
    deliveries: list[Delivery]
    data: bytes = field(init=False)
    clients: frozenset[str] = field(init=False)
    #: Stream positions of its first and last entries.
    first: tuple[int, int] = field(init=False)
    last: tuple[int, int] = field(init=False)

    def __post_init__(self) -> None:
        self.data = b"".join(d.frame for d in self.deliveries)
        self.clients = frozenset(d.client for d in self.deliveries)
        self.first = stream_position(self.deliveries[0].id)
        self.last = stream_position(self.deliveries[-1].id)

    @property
    def end(self) -> int:
        return self.start + len(self.deliveries)

    def frames(self, exclude: str | None, after: tuple[int, int] | None) -> bytes:
        """The frames, but those about ``exclude`` and those up to entry ``after``."""
        if after is not None:
            if self.last <= after:
                return b""
            if self.first > after:
                after = None
        if after is None and (exclude is None or exclude not in self.clients):
            return self.data
        return b"".join(
            d.frame
            for d in self.deliveries
            if d.client != exclude and (after is None or stream_position(d.id) > after)
        )


class Connection:
    """What the pruner watches of a subscriber: whether its connection is open,
    and whether it still reads. ``Subscriber`` reads the shared log; scoped
    streams read their own queue (``scoped``)."""

    __slots__ = (
        "_abort",
        "_alive",
        "_buffered",
        "_left",
        "_wake",
        "client",
        "congested",
        "counted",
        "reason",
        "stale",
        "writing_since",
    )

    def __init__(
        self,
        client: str | None,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> None:
        #: Events about this client are not delivered to it; None receives all.
        self.client = client
        self.reason: CloseReason | None = None
        #: Set when it may have missed entries; the next read raises ``Resync``.
        self.stale = False
        #: Since when (monotonic) its pending write has made no progress.
        self.writing_since: float | None = None
        # Bytes still buffered for the connection, and how many at the last look.
        self._buffered = buffered
        #: Bytes left to send at the last look, once a write is pending.
        self._left: int | None = None
        #: Waiting for what it has to send to drain; the pruner wakes it.
        self.congested = False
        #: Whether it counts among the open connections (``DeliveryLog.connections``).
        self.counted = False
        self._alive = alive
        self._abort = abort
        self._wake = asyncio.Event()

    def alive(self) -> bool:
        return self._alive is None or self._alive()

    def behind(self, start: int) -> bool:
        """Whether it missed deliveries (the log's oldest is ``start``)."""
        return False

    def wake(self) -> None:
        """New deliveries are in the log."""
        self._wake.set()

    def follows_presence(self) -> bool:
        """Whether it follows the presence stream, which a loss of entries there resets."""
        return True

    def resync(self) -> None:
        """Skip whatever is in the log; a fresh snapshot comes first."""
        self.stale = True
        self._wake.set()

    async def closed_within(self, seconds: float) -> bool:
        """Wait up to ``seconds`` for it to be closed; whether it is."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + seconds
        while self.reason is None and (left := deadline - loop.time()) > 0:
            # Readers re-check what woke them before they wait: clearing loses nothing.
            self._wake.clear()
            try:
                async with asyncio.timeout(left):
                    await self._wake.wait()
            except TimeoutError:
                break
        return self.reason is not None

    def close(self, reason: CloseReason = "closed") -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._wake.set()
        if reason == "overflow" and self._abort is not None:
            # Dropped, not ended cleanly: nothing buffered for it is kept.
            self._abort()

    @contextmanager
    def writing(self) -> Iterator[None]:
        """Mark a write as pending while the block runs."""
        self.writing_since = time.monotonic()
        self._left = None
        try:
            yield
        finally:
            self.writing_since = None

    def stalled(self, now: float) -> float:
        """Seconds it has sent nothing while it had something to send, as seen
        by successive looks (the pruner's)."""
        if self.writing_since is None and not self.congested:
            return 0.0
        if self._buffered is None:  # nothing to watch: the write's own age
            return now - (self.writing_since or now)
        left, before = self._buffered(), self._left
        self._left = left
        if self.writing_since is None or before is None or left < before:
            # Reading, however slowly (or the first look): measured from here.
            self.writing_since = now
            return 0.0
        return now - self.writing_since

    def buffered(self) -> int:
        """Bytes written to the connection and not sent yet."""
        return self._buffered() if self._buffered is not None else 0

    async def _ready(self, has_more: Callable[[], bool]) -> bool:
        """Wait until it has something to read (``has_more``, or a resync) and
        its connection has drained what it had to send; False once closed."""
        while self.reason is None:
            self.congested = self.buffered() > BUFFERED_BYTES
            if not self.congested and (self.stale or has_more()):
                break
            self._wake.clear()
            await self._wake.wait()
        return self.reason is None


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

    def behind(self, start: int) -> bool:
        return self.cursor < start

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
    """Deliveries for this process's subscribers (SSE connections, ``changes()``)."""

    def __init__(self, backlog: int = 1024, stall_timeout: float = STALL_TIMEOUT) -> None:
        self._backlog = backlog
        self._stall_timeout = stall_timeout
        self._segments: deque[Segment] = deque()
        #: Sequence number one past the newest delivery.
        self.end = 0
        #: Every subscriber: those reading this log, and scoped ones.
        self.subscribers: set[Connection] = set()
        self._readers: set[Subscriber] = set()
        #: Subscribers dropped: they fell behind the log and stopped reading.
        self.overflows = 0
        #: Subscribers sent a fresh snapshot because they fell behind the log.
        self.resets = 0
        #: Open client connections (in-process ``changes()`` listeners not counted).
        self.connections = 0
        self._per_client: dict[str, int] = {}
        self._delivered = asyncio.Event()

    @property
    def start(self) -> int:
        """Sequence number of the oldest delivery still in the log."""
        return self._segments[0].start if self._segments else self.end

    @contextmanager
    def subscribed(self, subscriber: Connection) -> Iterator[None]:
        """Count ``subscriber`` (and deliver to it, when it reads this log)
        while the block runs; close it after."""
        self.subscribers.add(subscriber)
        if isinstance(subscriber, Subscriber):
            self._readers.add(subscriber)
        client = subscriber.client
        if client is not None:
            subscriber.counted = True
            self.connections += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            yield
        finally:
            subscriber.close()
            self.subscribers.discard(subscriber)
            if isinstance(subscriber, Subscriber):
                self._readers.discard(subscriber)
            self.count_out(subscriber)

    def gone(self, subscriber: Connection) -> None:
        """``subscriber``'s connection closed."""
        subscriber.close("gone")
        self.count_out(subscriber)

    def count_out(self, subscriber: Connection) -> None:
        """Stop counting ``subscriber``'s connection (once): the moment it is
        seen closed, not when its handler ends, so that its client's
        reconnect is not refused for a connection that is gone."""
        client = subscriber.client
        if not subscriber.counted or client is None:  # counted: it has a client
            return
        subscriber.counted = False
        self.connections -= 1
        if (count := self._per_client.pop(client) - 1) > 0:
            self._per_client[client] = count

    def connections_of(self, client: str) -> int:
        """Open connections of ``client`` here, counted from the moment they subscribe."""
        return self._per_client.get(client, 0)

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

    async def prune_closed(self, worker: Worker) -> None:
        """Close, every ``PRUNE_INTERVAL``, the subscribers whose connection is
        gone, and drop those that stopped reading.

        An SSE handler waiting for deliveries would notice its client left
        only at its next write; this bounds how late a leave can start.
        """
        while True:
            self.prune()
            worker.ok()
            await asyncio.sleep(PRUNE_INTERVAL)

    def prune(self) -> int:
        """Close subscribers whose connection is gone, and drop those behind the
        log that have sent nothing for the stall timeout while they had something
        to send; returns how many."""
        now, start = time.monotonic(), self.start
        closed = 0
        for subscriber in list(self.subscribers):
            if subscriber.congested and subscriber.buffered() <= BUFFERED_BYTES:
                subscriber.wake()
            if not subscriber.alive():
                self.gone(subscriber)
            elif (
                subscriber.behind(start)
                and (stalled := subscriber.stalled(now)) >= self._stall_timeout
            ):
                log.warning(
                    "dropping a subscriber of %s: it stopped reading (nothing sent to it "
                    "for %.0f s) and fell more than %d events behind",
                    subscriber.client,
                    stalled,
                    self._backlog,
                )
                self.overflows += 1
                subscriber.close("overflow")
            else:
                continue
            closed += 1
        return closed

    def resync_presence(self) -> None:
        """The presence stream lost entries: a fresh snapshot for every subscriber
        that follows it. A stream of rooms alone lost nothing (its rooms' own
        streams tell when they do)."""
        for subscriber in self.subscribers:
            if subscriber.follows_presence():
                subscriber.resync()

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in list(self.subscribers):
            subscriber.close(reason)
