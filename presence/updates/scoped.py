"""Scoped streams: rooms, watch lists and occupancy, each connection with a queue.

A scoped stream does not read the shared log: what it needs is routed to it
when it arrives, through an index (room -> subscribers, watched id ->
subscribers), so fan-out costs the subscribers concerned, not every
connection. Its queue holds references to deliveries shared by all, and is
bounded: a subscriber that falls behind it gets a fresh snapshot, as one that
falls off the shared log does.
"""

from __future__ import annotations

import zlib
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ..entries import Delivery, RoomDelivery
from .connections import Connection, Resync


@dataclass(frozen=True, slots=True)
class Scope:
    """What one stream asked for."""

    rooms: tuple[str, ...] = ()
    #: The watched ids; None when the stream has no global part.
    watch: frozenset[str] | None = None
    occupancy: tuple[str, ...] = ()
    #: The member data to set in its rooms (canonical JSON), if any.
    data: str | None = None
    #: Names the scope in the stream's event ids: a resume with another
    #: scope's id cannot be exact.
    tag: str = field(init=False)

    def __post_init__(self) -> None:
        watch = "\n".join(sorted(self.watch)) if self.watch is not None else "-"
        text = "\n".join(self.rooms) + "\n\n" + watch
        object.__setattr__(self, "tag", format(zlib.crc32(text.encode()), "08x"))

    @property
    def streams(self) -> int:
        """How many stream positions its ids carry: the global one, then one per room."""
        return (self.watch is not None) + len(self.rooms)


@dataclass(frozen=True, slots=True)
class Occupancy:
    """A room's member count."""

    room: str
    count: int


Item = Delivery | RoomDelivery | Occupancy


class ScopedSubscriber(Connection):
    """One scoped SSE connection, or in-process listener of rooms (no client):
    the events routed to it, in arrival order."""

    __slots__ = ("_limit", "counts", "overflowed", "queue", "scope")

    def __init__(
        self,
        client: str | None,
        scope: Scope,
        limit: int,
        *,
        alive: Callable[[], bool] | None = None,
        abort: Callable[[], None] | None = None,
        buffered: Callable[[], int] | None = None,
    ) -> None:
        super().__init__(client, alive=alive, abort=abort, buffered=buffered)
        self.scope = scope
        self.queue: deque[Item] = deque()
        self._limit = limit
        #: Whether it fell more than its limit behind, until its fresh snapshot.
        self.overflowed = False
        #: The last count sent per occupancy room.
        self.counts: dict[str, int] = {}

    def behind(self) -> bool:
        return self.overflowed

    def follows_presence(self) -> bool:
        return self.scope.watch is not None

    def push(self, item: Item, *, wake: bool = True) -> bool:
        """Queue ``item``, and wake it unless told not to (it is woken later);
        True when that made it fall behind (it gets a fresh snapshot instead of
        what it missed)."""
        if self.overflowed:
            return False  # a fresh snapshot is coming
        if wake:
            self._wake.set()
        if len(self.queue) < self._limit:
            self.queue.append(item)
            return False
        self.queue.clear()
        self.overflowed = True
        self.stale = True
        return True

    async def items(self) -> list[Item]:
        """What was routed to it since the last call, once there is some (and its
        connection has drained what it had to send); empty once closed.

        Raises ``Resync`` (once) when it may have missed events.
        """
        if not await self._ready(lambda: bool(self.queue)):
            return []
        if self.stale:
            # The fresh snapshot is read after this: whatever is routed from now
            # on is queued again (what the snapshot covers is filtered out).
            self.stale = False
            self.overflowed = False
            self.queue.clear()
            self.counts.clear()  # the counts queued are gone: send them again
            raise Resync
        found = list(self.queue)
        self.queue.clear()
        return found


class Scopes:
    """The index of scoped subscribers, and the routing of events to them."""

    def __init__(self) -> None:
        self.rooms: dict[str, set[ScopedSubscriber]] = {}
        self.watched: dict[str, set[ScopedSubscriber]] = {}
        self.occupancy: dict[str, set[ScopedSubscriber]] = {}
        #: Streams sent a fresh snapshot because they fell behind.
        self.resets = 0
        #: Distinct rooms streams here follow (``room`` and ``occupancy``).
        self.followed = 0

    @contextmanager
    def subscribed(self, subscriber: ScopedSubscriber) -> Iterator[None]:
        scope = subscriber.scope
        self.followed += self.new_rooms(scope)
        for room in scope.rooms:
            _add(self.rooms, room, subscriber)
        for client in scope.watch or ():
            _add(self.watched, client, subscriber)
        for room in scope.occupancy:
            _add(self.occupancy, room, subscriber)
        try:
            yield
        finally:
            for room in scope.rooms:
                _remove(self.rooms, room, subscriber)
            for client in scope.watch or ():
                _remove(self.watched, client, subscriber)
            for room in scope.occupancy:
                _remove(self.occupancy, room, subscriber)
            self.followed -= self.new_rooms(scope)

    def new_rooms(self, scope: Scope) -> int:
        """How many of ``scope``'s rooms no stream here follows."""
        names = {*scope.rooms, *scope.occupancy}
        return sum(1 for r in names if r not in self.rooms and r not in self.occupancy)

    def deliver(self, batch: Sequence[Delivery]) -> None:
        """Global events, to the streams watching their client."""
        if not self.watched:
            return
        for delivery in batch:
            for subscriber in self.watched.get(delivery.client, ()):
                self.resets += subscriber.push(delivery)

    def deliver_rooms(
        self,
        batch: Sequence[RoomDelivery],
        start: int = 0,
        budget: int | None = None,
        woken: set[ScopedSubscriber] | None = None,
    ) -> int:
        """Room events from ``batch[start]`` on, to the room's other members here,
        until about ``budget`` pushes are made (a delivery counts one more, and
        is never split); the index of the first one left. With ``woken``, the
        streams are not woken but added to it, for the caller to wake once the
        whole batch is in: each then writes it at once, not piece by piece."""
        spent = 0
        index = start
        wake = woken is None
        while index < len(batch) and (budget is None or spent < budget):
            delivery = batch[index]
            index += 1
            subscribers = self.rooms.get(delivery.room, ())
            for subscriber in subscribers:
                if subscriber.client != delivery.client:
                    self.resets += subscriber.push(delivery, wake=wake)
            if woken is not None:
                woken.update(subscribers)
            spent += 1 + len(subscribers)
        return index

    def count(self, room: str, count: int) -> None:
        """A room's member count, to the streams following it that have not seen it."""
        for subscriber in self.occupancy.get(room, ()):
            if subscriber.counts.get(room) != count:
                subscriber.counts[room] = count
                self.resets += subscriber.push(Occupancy(room, count))

    def resync_room(self, room: str) -> None:
        for subscriber in self.rooms.get(room, ()):
            subscriber.resync()


def _add(index: dict[str, set[ScopedSubscriber]], key: str, s: ScopedSubscriber) -> None:
    index.setdefault(key, set()).add(s)


def _remove(index: dict[str, set[ScopedSubscriber]], key: str, s: ScopedSubscriber) -> None:
    found = index.get(key)
    if found is not None:
        found.discard(s)
        if not found:
            del index[key]
