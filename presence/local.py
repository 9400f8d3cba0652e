"""What this process holds: its online clients and its event subscribers.

Plain synchronous state, touched only from the event loop. Redis is never
called from here; the publisher and the fan-out read this state in one task each.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from .events import PresenceEvent

log = logging.getLogger(__name__)

CloseReason = Literal["closed", "overflow", "gone", "shutdown"]


@dataclass(frozen=True, slots=True)
class Delivery:
    """One presence event, with its SSE frame encoded once for every subscriber."""

    event: PresenceEvent
    frame: bytes


class Subscriber:
    """A bounded queue of deliveries for one SSE connection or in-process listener.

    A subscriber that falls ``maxsize`` deliveries behind is closed: a slow
    reader costs a reconnect, never unbounded memory.
    """

    __slots__ = ("_alive", "_on_close", "_queue", "client", "reason")

    def __init__(
        self,
        client: str | None,
        maxsize: int,
        *,
        alive: Callable[[], bool] | None = None,
        on_close: Callable[[CloseReason], None] | None = None,
    ) -> None:
        #: Events about this client are not delivered to it; None receives all.
        self.client = client
        self.reason: CloseReason | None = None
        self._alive = alive
        self._on_close = on_close
        self._queue: asyncio.Queue[Delivery | None] = asyncio.Queue(maxsize)

    @property
    def closed(self) -> bool:
        return self.reason is not None

    def alive(self) -> bool:
        return self._alive is None or self._alive()

    def offer(self, delivery: Delivery) -> None:
        if self.reason is not None:
            return
        try:
            self._queue.put_nowait(delivery)
        except asyncio.QueueFull:
            log.warning(
                "closing a subscriber of %s: %d events behind", self.client, self._queue.maxsize
            )
            self.close("overflow")

    def close(self, reason: CloseReason = "closed") -> None:
        if self.reason is not None:
            return
        self.reason = reason
        # Free the queue so the wake-up fits and the reader stops at once.
        while not self._queue.empty():
            self._queue.get_nowait()
        self._queue.put_nowait(None)
        if self._on_close is not None:
            self._on_close(reason)

    async def get(self) -> Delivery | None:
        """The next delivery, or None once closed."""
        if self.reason is not None and self._queue.empty():
            return None
        return await self._queue.get()

    async def get_many(self, limit: int = 256) -> list[Delivery]:
        """The next deliveries: waits for one, then takes what is queued, up to ``limit``.

        Empty once closed. A connection writes them in one go, which is what
        keeps a burst (N clients joining: N x N deliveries) affordable.
        """
        first = await self.get()
        if first is None:
            return []
        batch = [first]
        while len(batch) < limit and not self._queue.empty():
            delivery = self._queue.get_nowait()
            if delivery is None:
                break
            batch.append(delivery)
        return batch


class LocalState:
    """Clients held by this process (SSE connections, ``track()``) and subscribers."""

    def __init__(self) -> None:
        self._holds: dict[str, int] = {}
        self._fresh: set[str] = set()
        self.wake = asyncio.Event()
        self.subscribers: set[Subscriber] = set()

    @property
    def clients(self) -> Iterable[str]:
        return self._holds.keys()

    @property
    def connections(self) -> int:
        """Open client connections (in-process ``changes()`` listeners not counted)."""
        return sum(1 for s in self.subscribers if s.client is not None)

    def __contains__(self, client: str) -> bool:
        return client in self._holds

    def hold(self, client: str) -> None:
        """Count one more connection of ``client``; a new client is heartbeated at once."""
        count = self._holds.get(client, 0)
        self._holds[client] = count + 1
        if count == 0:
            self._fresh.add(client)
            self.wake.set()

    def release(self, client: str) -> None:
        count = self._holds.get(client, 0)
        if count <= 1:
            self._holds.pop(client, None)
            self._fresh.discard(client)
        else:
            self._holds[client] = count - 1

    def take_fresh(self) -> list[str]:
        """Clients held since the last call, to heartbeat before the next tick."""
        fresh = list(self._fresh)
        self._fresh.clear()
        self.wake.clear()
        return fresh

    def prune(self) -> int:
        """Close subscribers whose connection is gone; returns how many."""
        gone = [s for s in self.subscribers if not s.alive()]
        for subscriber in gone:
            subscriber.close("gone")
        return len(gone)

    def deliver(self, delivery: Delivery) -> None:
        about = delivery.event.client
        for subscriber in self.subscribers:
            if subscriber.client != about:
                subscriber.offer(delivery)

    def close_all(self, reason: CloseReason) -> None:
        for subscriber in list(self.subscribers):
            subscriber.close(reason)
