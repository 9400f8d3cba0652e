"""What this process holds: its online clients and its event subscribers.

Plain synchronous state, touched only from the event loop; Redis is never
called from here.

Deliveries go to one shared, bounded log, not to a queue per subscriber: the
reader appends each event once and wakes each subscriber once per batch, and
every subscriber reads the log from its own cursor. A burst of N clients
joining costs N appends and N wake-ups per batch instead of N x N queue
operations in the reader, and memory is one log whatever the number of
connections. A subscriber whose cursor falls off the log's start is closed:
a slow reader costs a reconnect, never unbounded memory.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Literal

from .contract import Status
from .events import PresenceEvent

log = logging.getLogger(__name__)

CloseReason = Literal["closed", "overflow", "gone", "shutdown"]


@dataclass(slots=True)
class Delivery:
    """One presence event, with its SSE frame encoded once for every subscriber.

    Never changed once made. It holds the event's fields rather than a
    ``PresenceEvent``: a burst makes one per entry, and SSE subscribers only
    need the frame.
    """

    id: str
    client: str
    status: Status
    server: str
    frame: bytes

    @property
    def event(self) -> PresenceEvent:
        return PresenceEvent(self.id, self.client, self.status, self.server)


class Resync(Exception):
    """The presence stream lost entries this subscriber may not have seen.

    Its view of who is online may be stale: it needs a fresh snapshot.
    """


class Subscriber:
    """One SSE connection or in-process listener, reading the shared log."""

    __slots__ = ("_alive", "_local", "_on_close", "_wake", "client", "cursor", "reason", "stale")

    def __init__(
        self,
        local: LocalState,
        client: str | None,
        *,
        alive: Callable[[], bool] | None = None,
        on_close: Callable[[CloseReason], None] | None = None,
    ) -> None:
        #: Events about this client are not delivered to it; None receives all.
        self.client = client
        self.reason: CloseReason | None = None
        #: Set when the stream lost entries; ``get_many`` raises ``Resync`` once.
        self.stale = False
        #: Sequence number of the next delivery to read.
        self.cursor = local.end
        self._local = local
        self._alive = alive
        self._on_close = on_close
        self._wake = asyncio.Event()

    def alive(self) -> bool:
        return self._alive is None or self._alive()

    def wake(self) -> None:
        """New deliveries are in the log."""
        self._wake.set()

    def resync(self) -> None:
        self.stale = True
        self._wake.set()

    def close(self, reason: CloseReason = "closed") -> None:
        if self.reason is not None:
            return
        self.reason = reason
        self._wake.set()
        if self._on_close is not None:
            self._on_close(reason)

    async def get_many(self, limit: int = 256) -> list[Delivery]:
        """The next deliveries not about this client, up to ``limit``; empty once closed.

        Raises ``Resync`` (once) when the stream lost entries.
        """
        while True:
            while self.reason is None and not self.stale and self.cursor >= self._local.end:
                self._wake.clear()
                await self._wake.wait()
            if self.reason is not None:
                return []
            if self.stale:
                self.stale = False
                raise Resync
            batch = self._local.read(self.cursor, limit)
            self.cursor += len(batch)
            if self.client is not None:
                batch = [d for d in batch if d.client != self.client]
            if batch:
                return batch


class LocalState:
    """Clients held by this process (SSE connections, ``track()``) and subscribers."""

    def __init__(self, backlog: int = 1024, leave_grace: float = 0.0) -> None:
        self._holds: dict[str, int] = {}
        self._fresh: set[str] = set()
        self._leave_grace = leave_grace
        #: Clients whose last connection closed -> when (monotonic) to announce it.
        self._leaving: dict[str, float] = {}
        self._log: deque[Delivery] = deque(maxlen=backlog)
        #: Sequence number one past the newest delivery.
        self.end = 0
        self.wake = asyncio.Event()
        self.subscribers: set[Subscriber] = set()
        #: Subscribers closed because they fell behind the log.
        self.overflows = 0
        #: Open client connections (in-process ``changes()`` listeners not counted).
        self.connections = 0

    @property
    def clients(self) -> Iterable[str]:
        return self._holds.keys()

    def holds(self, client: str) -> int:
        """How many connections (and ``track()`` blocks) hold ``client`` here."""
        return self._holds.get(client, 0)

    def __contains__(self, client: str) -> bool:
        return client in self._holds

    @contextmanager
    def subscribed(self, subscriber: Subscriber) -> Iterator[None]:
        """Deliver to ``subscriber`` while the block runs; close it after."""
        self.subscribers.add(subscriber)
        counted = subscriber.client is not None
        self.connections += counted
        try:
            yield
        finally:
            subscriber.close()
            self.subscribers.discard(subscriber)
            self.connections -= counted

    def hold(self, client: str) -> None:
        """Count one more connection of ``client``; a new client is heartbeated at once."""
        count = self._holds.get(client, 0)
        self._holds[client] = count + 1
        if count == 0 and self._leaving.pop(client, None) is None:
            # Back within its leave grace (a reload), a client is simply still held.
            self._fresh.add(client)
            self.wake.set()

    def release(self, client: str, *, leave: bool = True) -> None:
        """Count one connection less; after the last, announce the leave after the grace.

        ``leave=False`` (shutdown): no leave; the TTL decides, as the client may
        be reconnecting to another server.
        """
        count = self._holds.get(client, 0)
        if count <= 1:
            # A fresh client keeps its first heartbeat even if it left already:
            # it was connected, so it was online.
            self._holds.pop(client, None)
            if leave and self._leave_grace > 0:
                self._leaving[client] = time.monotonic() + self._leave_grace
                self.wake.set()
        else:
            self._holds[client] = count - 1

    def take_fresh(self) -> list[str]:
        """Clients held since the last call, to heartbeat before the next tick."""
        fresh = list(self._fresh)
        self._fresh.clear()
        self.wake.clear()
        return fresh

    def take_leaves(self) -> list[str]:
        """Clients whose leave grace ran out: announce that they left this server."""
        now = time.monotonic()
        due = [c for c, at in self._leaving.items() if at <= now]
        for client in due:
            del self._leaving[client]
        return due

    def next_leave(self) -> float | None:
        """When (monotonic) the next leave is due, if any."""
        return min(self._leaving.values(), default=None)

    def retry_leaves(self, clients: Iterable[str]) -> None:
        """Leaves that could not be sent: due again at once, unless the client is back."""
        for client in clients:
            if client not in self._holds:
                self._leaving.setdefault(client, time.monotonic())

    def prune(self) -> int:
        """Close subscribers whose connection is gone; returns how many."""
        gone = [s for s in self.subscribers if not s.alive()]
        for subscriber in gone:
            subscriber.close("gone")
        return len(gone)

    def deliver(self, deliveries: Sequence[Delivery]) -> None:
        """Append to the log, then wake every subscriber once (or drop it if it fell behind)."""
        if not deliveries:
            return
        self._log.extend(deliveries)
        self.end += len(deliveries)
        start = self.end - len(self._log)
        for subscriber in list(self.subscribers):
            if subscriber.cursor < start:
                log.warning(
                    "closing a subscriber of %s: more than %d events behind",
                    subscriber.client,
                    self._log.maxlen,
                )
                self.overflows += 1
                subscriber.close("overflow")
            else:
                subscriber.wake()

    def read(self, cursor: int, limit: int) -> list[Delivery]:
        offset = cursor - (self.end - len(self._log))
        return list(itertools.islice(self._log, offset, offset + limit))

    def resync_all(self) -> None:
        for subscriber in self.subscribers:
            subscriber.resync()

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in list(self.subscribers):
            subscriber.close(reason)
