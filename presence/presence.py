"""``Presence``: the public face of one process's service.

Start and close it, hold clients online (``track``), read who is online and
who is in a room, change a member's data, listen to changes. What the web
layer and the workers share stays behind it, in ``service``.

Its listeners translate internal signals into public values: a subscriber's
``Resync`` becomes a ``Reset`` (or, for rooms, each room's ``RoomSnapshot``),
a closed subscription the end of the iteration. An embedder never meets a
private exception, nor a Redis error.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from types import TracebackType
from typing import Any, TypeVar, overload

from .contract import check_id
from .entries import RoomDelivery, encode_data
from .events import OnlineClient, PresenceEvent, Reset, RoomEvent
from .positions import Seen, later, seen, stream_position
from .redis_client import REDIS_FAILURES
from .service import Service
from .settings import Settings
from .supervise import UNREACHABLE
from .updates.connections import Connection, Resync
from .updates.replay import Replay
from .updates.room_snapshot import RoomSnapshot
from .updates.scoped import Scope
from .updates.scoped_start import ScopedStream
from .updates.snapshot import Snapshot

log = logging.getLogger(__name__)

#: Seconds one attempt at a listener's snapshot may take.
RESET_TIMEOUT = 10.0

T = TypeVar("T")


class Presence:
    """Presence for one process: start it, then mark clients online and watch changes.

    >>> async with Presence(Settings()) as presence:
    ...     async with presence.track("alice"):
    ...         ...  # alice is online while this block runs

    Closing stops heartbeating this process's clients without publishing
    OFFLINE for them: they may reconnect to another server, and their keys
    expire otherwise.
    """

    def __init__(self, settings: Settings | None = None) -> None:
        self._service = Service(settings or Settings())

    @property
    def settings(self) -> Settings:
        return self._service.settings

    async def start(self) -> None:
        """Connect to Redis and start the workers; raises ``PresenceError`` subclasses."""
        await self._service.start()

    async def close(self) -> None:
        """End every listener and stream, stop the workers, close Redis."""
        await self._service.close()

    async def __aenter__(self) -> Presence:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    @asynccontextmanager
    async def track(
        self, client_id: str, rooms: Sequence[str] = (), data: dict[str, Any] | None = None
    ) -> AsyncIterator[None]:
        """Keep ``client_id`` online, and a member of ``rooms`` with ``data``,
        heartbeated by this server while the block runs.

        Raises ``InvalidClientId`` for an invalid id or room, ``ValueError`` for
        data that is not a JSON object of at most 1 KB.
        """
        member_data = None if data is None else encode_data(data)
        with self._service.held_online(client_id, rooms, member_data):
            yield

    @overload
    def changes(
        self, rooms: None = None
    ) -> AbstractAsyncContextManager[AsyncIterator[PresenceEvent | Reset]]: ...

    @overload
    def changes(
        self, rooms: Sequence[str]
    ) -> AbstractAsyncContextManager[AsyncIterator[RoomSnapshot | RoomEvent]]: ...

    def changes(
        self, rooms: Sequence[str] | None = None
    ) -> (
        AbstractAsyncContextManager[AsyncIterator[PresenceEvent | Reset]]
        | AbstractAsyncContextManager[AsyncIterator[RoomSnapshot | RoomEvent]]
    ):
        """Presence events from now on, in stream order; with ``rooms``, those
        rooms' members and transitions instead.

        >>> async with presence.changes() as events:
        ...     async for event in events:
        ...         print(event)

        When this listener may have missed entries (the presence stream lost
        some: trimmed, or Redis restarted without its data; or it fell
        ``queue_size`` events behind), a ``Reset`` comes instead, with
        everyone online; events go on after it.

        With ``rooms``, it first yields each room's ``RoomSnapshot`` (its
        members, exact at its stream's ``position``), then a ``RoomEvent`` for
        each transition after it; when it may have missed some, each room's
        ``RoomSnapshot`` again. Raises ``InvalidClientId`` for an invalid room.

        While Redis cannot give a snapshot, it is retried with backoff, as the
        workers retry; the iteration ends if the service closes meanwhile.
        """
        if rooms is None:
            return self._presence_changes()
        if isinstance(rooms, str):
            raise TypeError("rooms must be a sequence of room names, not one string")
        names = tuple(dict.fromkeys(rooms))
        for room in names:
            check_id(room)
        if not names:
            raise ValueError("rooms must name at least one room")
        return self._room_changes(names)

    async def online(self) -> list[OnlineClient]:
        """Every online client, on any server, sorted by client id."""
        return await self._service.online()

    async def status(self, client_id: str) -> OnlineClient | None:
        """The client and its server when it is online, else None."""
        return await self._service.status(client_id)

    async def last_seen(self, client_id: str, room: str | None = None) -> int | None:
        """Unix ms of the client's last OFFLINE (in ``room``, if given), kept
        for ``last_seen_retention``; None when presence has not seen it leave
        since. Meaningful while ``status`` says it is offline."""
        return await self._service.last_seen(client_id, room)

    async def room(self, room: str) -> RoomSnapshot:
        """The members of ``room``, on any server; ``RoomUnreadable`` when Redis
        fails to read it (a key of the wrong type)."""
        return await self._service.room(room)

    async def set_data(self, room: str, client_id: str, data: dict[str, Any]) -> bool | None:
        """Replace ``client_id``'s data in ``room``: True when it changed (one
        UPDATE), False when it was the same, None when the client is not a member.

        Raises ``ValueError`` for data that is not a JSON object of at most 1 KB.
        """
        return await self._service.set_data(room, client_id, data)

    async def snapshot(self) -> Snapshot:
        """Who is online, with the presence stream position it is exact at."""
        return await self._service.snapshot()

    async def replay(self, after: str) -> Replay | None:
        """The presence entries after stream entry ``after``, for a resuming
        connection; None when they cannot be exact (the entry is gone or
        unknown, or more than ``queue_size`` came after it)."""
        return await self._service.replay(after)

    @asynccontextmanager
    async def _presence_changes(self) -> AsyncIterator[AsyncIterator[PresenceEvent | Reset]]:
        with self._service.subscribed(None) as subscriber:

            async def events() -> AsyncIterator[PresenceEvent | Reset]:
                after: Seen | None = None
                position = ""
                while True:
                    try:
                        batch = await subscriber.get_many()
                    except Resync:
                        snapshot = await self._retried(subscriber, self._service.snapshot)
                        if snapshot is None:
                            return  # closed while Redis was away
                        after, position = seen(snapshot.position), snapshot.position
                        yield Reset(snapshot.position, snapshot.clients)
                        continue
                    if not batch:
                        return
                    for delivery in batch:
                        if after is not None:
                            if stream_position(delivery.id) <= after[delivery.shard]:
                                continue  # in the reset already
                            if len(after) == 1:
                                after = None
                        event = delivery.event
                        if "," in position:
                            # Sharded: never behind the reset (see ``positions``).
                            position = later(position, event.id)
                            event = dataclasses.replace(event, id=position)
                        yield event

            yield events()

    @asynccontextmanager
    async def _room_changes(
        self, rooms: tuple[str, ...]
    ) -> AsyncIterator[AsyncIterator[RoomSnapshot | RoomEvent]]:
        service = self._service
        if not service.started:
            raise RuntimeError("presence is not started")
        with service.scoped(None, Scope(rooms=rooms)) as subscriber:
            stream = ScopedStream(service.scoped_sources, subscriber)

            async def events() -> AsyncIterator[RoomSnapshot | RoomEvent]:
                start = await self._retried(subscriber, lambda: stream.start(None))
                while start is not None and start.snapshot is not None:
                    for members in start.snapshot.rooms:
                        yield members
                    try:
                        while items := await stream.items():
                            for item in items:
                                if isinstance(item, RoomDelivery):
                                    yield item.event
                        return
                    except Resync:
                        start = await self._retried(subscriber, stream.restart)

            yield events()

    async def _retried(self, listener: Connection, read: Callable[[], Awaitable[T]]) -> T | None:
        """``read()`` for a listener, retried with the workers' backoff until
        Redis gives it; None once the listener is closed.

        An embedder's iterator never raises a Redis error: it waits, as an SSE
        client would reconnect.
        """
        backoff, failing = 0.1, False
        while listener.reason is None:
            try:
                # Bounded: a snapshot asked for as the service closes is never answered.
                async with asyncio.timeout(RESET_TIMEOUT):
                    return await read()
            except (TimeoutError, *REDIS_FAILURES) as exc:
                if not failing:
                    # An unreachable Redis is the outage's line, which the workers log.
                    unreachable = isinstance(exc, (TimeoutError, *UNREACHABLE))
                    log.log(
                        logging.DEBUG if unreachable else logging.WARNING,
                        "no fresh snapshot for a changes() listener: %s: %s; retrying with backoff",
                        type(exc).__name__,
                        exc,
                    )
                failing = True
            if await listener.closed_within(backoff):
                break
            backoff = min(backoff * 2, self._service.backoff)
        return None
