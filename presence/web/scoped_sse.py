"""A scoped SSE stream: rooms, a watch list, occupancy.

Its event ids carry one stream position per part of its scope (the presence
stream for the watch list, then each room's stream), so ``Last-Event-ID``
resumes every part exactly; an id of another scope, or a part that cannot be
replayed exactly, gets a reset snapshot instead.

As with a global stream, the connection subscribes before it reads its
start, and holds its memberships only once it has one.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass

from aiohttp import web
from aiohttp_sse import EventSourceResponse
from redis.exceptions import RedisError

from ..errors import RoomUnreadable
from ..presence import Presence
from ..updates.deliveries import Resync
from ..updates.room_snapshot import RoomSnapshot
from ..updates.scoped import Item, Occupancy, Scope, ScopedSubscriber
from ..updates.snapshot import Snapshot
from ..wire import Delivery, RoomDelivery, parse_scope_id, scope_id, stream_position
from .requests import fail
from .sse import SNAPSHOT_TIMEOUT, serve_stream, watch_connection, write_pieces

log = logging.getLogger(__name__)


class ScopedFrames:
    """One stream's positions, and the frames of what is routed to it."""

    def __init__(self, client: str, scope: Scope) -> None:
        self._client = client
        self._scope = scope
        offset = scope.watch is not None
        #: Part of the id per room.
        self.part = {room: offset + i for i, room in enumerate(scope.rooms)}
        self.positions = ["0-0"] * scope.streams
        # Per part, the last position sent: each part's events come in its
        # stream's order, so one at or before it was sent already.
        self._sent = [(0, 0)] * scope.streams

    def start(self, positions: list[str]) -> None:
        self.positions = list(positions)
        self._sent = [stream_position(p) for p in positions]

    def snapshot(
        self, watched: Snapshot | None, rooms: dict[str, RoomSnapshot], *, reset: bool
    ) -> bytes:
        """The ``snapshot`` frame, and the positions it is exact at; none for a
        stream of occupancy alone (its counts are its snapshot)."""
        if not self._scope.streams:
            return b""
        parts: list[bytes] = []
        positions: list[str] = []
        if watched is not None:
            parts.append(b'"clients":' + watched.array(self._client))
            positions.append(watched.position)
        if self._scope.rooms:
            listed = b",".join(
                b"%b:%b" % (json.dumps(room).encode(), rooms[room].array(self._client))
                for room in self._scope.rooms
            )
            parts.append(b'"rooms":{%b}' % listed)
            positions += [rooms[room].position for room in self._scope.rooms]
        if reset:
            parts.append(b'"reset":true')
        self.start(positions)
        return b"id: %b\nevent: snapshot\ndata: {%b}\n\n" % (self._id(), b",".join(parts))

    def frames(self, items: list[Item]) -> bytes:
        """The frames of ``items``: those of this scope after its start, but those
        about its own client."""
        out: list[bytes] = []
        for item in items:
            if isinstance(item, Occupancy):
                out.append(
                    b'event: occupancy\ndata: {"room":%b,"count":%d}\n\n'
                    % (json.dumps(item.room).encode(), item.count)
                )
                continue
            if item.client == self._client:
                continue
            if isinstance(item, RoomDelivery):
                part, position = self.part[item.room], item.position
            else:
                part, position = 0, stream_position(item.id)
            if position <= self._sent[part]:
                continue  # in the start already
            self._sent[part] = position
            self.positions[part] = item.id
            body = item.body if isinstance(item, RoomDelivery) else _body(item)
            out.append(b"id: %b\nevent: presence\ndata: %b\n\n" % (self._id(), body))
        return b"".join(out)

    def _id(self) -> bytes:
        return scope_id(self._scope.tag, self.positions)


def _body(delivery: Delivery) -> bytes:
    frame = delivery.frame
    return frame[frame.index(b"data: ") + 6 : -2]


@dataclass(slots=True)
class _Start:
    frame: bytes
    #: A room was read past this start meanwhile: send a fresh snapshot.
    stale: bool = False


async def scoped_events(
    request: web.Request,
    presence: Presence,
    client_id: str,
    scope: Scope,
    resume: str | None,
    expiry: float | None,
) -> web.StreamResponse:
    alive, abort, buffered = watch_connection(request)
    frames = ScopedFrames(client_id, scope)
    with presence.scoped(
        client_id, scope, alive=alive, abort=abort, buffered=buffered
    ) as subscriber:
        read = {room: presence.room_reader.join(room) for room in scope.rooms}
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                start = await _start(presence, scope, frames, resume, read)
                counts = await presence.occupancy.counts(list(scope.occupancy))
        except RoomUnreadable as exc:
            # That room only: the snapshot reader logs it, throttled.
            fail(web.HTTPServiceUnavailable, str(exc))
        except (TimeoutError, RedisError, OSError) as exc:
            log.debug("no snapshot for %s: %s", client_id, exc)  # healthz says why
            fail(web.HTTPServiceUnavailable, "presence is unavailable: cannot read Redis")
        if start.stale:
            subscriber.resync()
        occupancy = _counted(subscriber, counts)
        with presence.held_online(client_id, scope.rooms, scope.data):
            first = start.frame + frames.frames(occupancy)
            return await serve_stream(
                request,
                presence,
                subscriber,
                expiry,
                lambda sse: _stream(sse, presence, subscriber, frames, first),
            )


def _counted(subscriber: ScopedSubscriber, counts: dict[str, int]) -> list[Item]:
    """The occupancy events of ``counts``, read just now. A count the poller
    queued meanwhile stays the one on record: it is written after these, and
    the next poll corrects it."""
    for room, count in counts.items():
        subscriber.counts.setdefault(room, count)
    return [Occupancy(room, count) for room, count in counts.items()]


async def _start(
    presence: Presence,
    scope: Scope,
    frames: ScopedFrames,
    resume: str | None,
    read: dict[str, bool],
) -> _Start:
    """The replay after ``resume`` when it can be exact, else a snapshot."""
    positions = parse_scope_id(resume, scope.tag, scope.streams) if resume else None
    replayed = None
    if positions is not None:
        replayed = await _replay(presence, scope, frames, positions)
    if replayed is not None:
        start = _Start(replayed)
    else:
        start = _Start(await _snapshot(presence, scope, frames, reset=bool(resume)))
    for room in scope.rooms:
        position = frames.positions[frames.part[room]]
        if not presence.room_reader.start_at(room, position, read=read[room]):
            start.stale = True
    return start


async def _snapshot(
    presence: Presence, scope: Scope, frames: ScopedFrames, *, reset: bool
) -> bytes:
    watched = None if scope.watch is None else await presence.watched(sorted(scope.watch))
    rooms = await presence.room_snapshots(scope.rooms) if scope.rooms else {}
    return frames.snapshot(watched, rooms, reset=reset)


async def _replay(
    presence: Presence, scope: Scope, frames: ScopedFrames, positions: list[str]
) -> bytes | None:
    items: list[Item] = []
    part = 0
    if scope.watch is not None:
        replay = await presence.replay(positions[0])
        if replay is None:
            return None
        items += [d for d in replay.deliveries if d.client in scope.watch]
        part = 1
    for room, after in zip(scope.rooms, positions[part:], strict=True):
        found = await presence.replay_room(room, after)
        if found is None:
            return None
        items += found.deliveries
    frames.start(positions)
    return frames.frames(items)


async def _stream(
    sse: EventSourceResponse,
    presence: Presence,
    subscriber: ScopedSubscriber,
    frames: ScopedFrames,
    first: bytes,
) -> None:
    """Write the start, then what is routed to this stream."""
    await write_pieces(sse, subscriber, first)
    scope = subscriber.scope
    while True:
        try:
            items = await subscriber.items()
        except Resync:
            frame = await _snapshot(presence, scope, frames, reset=True)
            for room in scope.rooms:
                presence.room_reader.start_at(room, frames.positions[frames.part[room]], read=True)
            counts = await presence.occupancy.counts(list(scope.occupancy))
            frame += frames.frames(_counted(subscriber, counts))
            await write_pieces(sse, subscriber, frame)
            continue
        if not items:
            return
        if data := frames.frames(items):
            with subscriber.writing():
                await sse.write(data)
