"""This process's connections: what is watched of each, and the registry of all.

Plain synchronous state, touched only from the event loop; Redis is never
called from here. Every connection is registered here, whatever it reads
(the shared log, ``delivery_log``, or its own queue, ``scoped``): counted per
client, watched by one pruner, closed or resynced all at once.

A connection that falls behind is not closed: it gets a fresh snapshot
instead of the events it missed. Only one that has also stopped reading (its
pending write drained nothing for ``STALL_TIMEOUT``) is dropped: a stalled
reader costs a reconnect, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Literal

from ..supervise import Worker

log = logging.getLogger(__name__)

PRUNE_INTERVAL = 0.25
#: A connection with more than this still to send waits for it to drain
#: before it reads more: per connection, memory stays within about twice it
#: (and the kernel's buffer), and a slow reader's events coalesce instead.
BUFFERED_BYTES = 32 * 1024
#: Seconds a pending write may drain nothing before a connection that fell
#: behind is taken for one that stopped reading, and dropped (the default of
#: ``Settings.stall_timeout``).
STALL_TIMEOUT = 10.0

CloseReason = Literal["closed", "overflow", "gone", "shutdown"]


class Resync(Exception):
    """This subscriber may have missed entries (a stream it follows lost some,
    or it fell behind): it needs a fresh snapshot."""


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
        #: Whether it counts among the open connections (``Connections.open``).
        self.counted = False
        self._alive = alive
        self._abort = abort
        self._wake = asyncio.Event()

    def alive(self) -> bool:
        return self._alive is None or self._alive()

    def behind(self) -> bool:
        """Whether it fell behind what it reads (it gets a fresh snapshot)."""
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


class Connections:
    """Every connection of this process: SSE streams, global or scoped, and
    in-process listeners (registered, but not counted: they have no client)."""

    def __init__(self, backlog: int = 1024, stall_timeout: float = STALL_TIMEOUT) -> None:
        self._backlog = backlog
        self._stall_timeout = stall_timeout
        self.subscribers: set[Connection] = set()
        #: Connections dropped: they fell behind and stopped reading.
        self.overflows = 0
        #: Open client connections (in-process listeners not counted).
        self.open = 0
        self._per_client: dict[str, int] = {}

    @contextmanager
    def subscribed(self, connection: Connection) -> Iterator[None]:
        """Count ``connection`` while the block runs; close it after."""
        self.subscribers.add(connection)
        client = connection.client
        if client is not None:
            connection.counted = True
            self.open += 1
            self._per_client[client] = self._per_client.get(client, 0) + 1
        try:
            yield
        finally:
            connection.close()
            self.subscribers.discard(connection)
            self.count_out(connection)

    def gone(self, connection: Connection) -> None:
        """``connection`` closed."""
        connection.close("gone")
        self.count_out(connection)

    def count_out(self, connection: Connection) -> None:
        """Stop counting ``connection`` (once): the moment it is seen closed, not
        when its handler ends, so that its client's reconnect is not refused
        for a connection that is gone."""
        client = connection.client
        if not connection.counted or client is None:  # counted: it has a client
            return
        connection.counted = False
        self.open -= 1
        if (count := self._per_client.pop(client) - 1) > 0:
            self._per_client[client] = count

    def open_of(self, client: str) -> int:
        """Open connections of ``client`` here, counted from the moment they subscribe."""
        return self._per_client.get(client, 0)

    async def prune_closed(self, worker: Worker) -> None:
        """Close, every ``PRUNE_INTERVAL``, the connections that are gone, and
        drop those that stopped reading.

        An SSE handler waiting for deliveries would notice its client left
        only at its next write; this bounds how late a leave can start.
        """
        while True:
            self.prune()
            worker.ok()
            await asyncio.sleep(PRUNE_INTERVAL)

    def prune(self) -> int:
        """Close connections that are gone, and drop those behind that have sent
        nothing for the stall timeout while they had something to send;
        returns how many."""
        now = time.monotonic()
        closed = 0
        for subscriber in list(self.subscribers):
            if subscriber.congested and subscriber.buffered() <= BUFFERED_BYTES:
                subscriber.wake()
            if not subscriber.alive():
                self.gone(subscriber)
            elif (
                subscriber.behind() and (stalled := subscriber.stalled(now)) >= self._stall_timeout
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
        """The presence stream lost entries: a fresh snapshot for every connection
        that follows it. A stream of rooms alone lost nothing (its rooms' own
        streams tell when they do)."""
        for subscriber in self.subscribers:
            if subscriber.follows_presence():
                subscriber.resync()

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in list(self.subscribers):
            subscriber.close(reason)
