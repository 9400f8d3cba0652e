"""A scoped SSE stream: rooms, a watch list, occupancy.

Its start is one call (``updates.scoped_start``); this module answers a
start that cannot be read with a 503, holds the memberships once the stream
has its start, and writes what ``frames`` encodes.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

from aiohttp import web
from aiohttp_sse import EventSourceResponse

from ..entries import RoomDelivery
from ..errors import RoomUnreadable
from ..frames import ScopedFrames, event_data, occupancy_frame
from ..redis_client import REDIS_FAILURES
from ..service import Service
from ..updates.scoped import Item, Occupancy, Scope
from ..updates.scoped_start import ScopedStream, Start, start_scoped
from .requests import fail
from .sse import SNAPSHOT_TIMEOUT, serve_stream, watch_connection, write_pieces

log = logging.getLogger(__name__)


async def scoped_events(
    request: web.Request,
    service: Service,
    client_id: str,
    scope: Scope,
    resume: str | None,
    expiry: float | None,
) -> web.StreamResponse:
    alive, abort, buffered = watch_connection(request)
    with service.scoped(
        client_id, scope, alive=alive, abort=abort, buffered=buffered
    ) as subscriber:
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                stream, start = await start_scoped(service.scoped_sources, subscriber, resume)
        except RoomUnreadable as exc:
            # That room only: the snapshot reader logs it, throttled.
            fail(web.HTTPServiceUnavailable, str(exc))
        except (TimeoutError, *REDIS_FAILURES) as exc:
            log.debug("no snapshot for %s: %s", client_id, exc)  # healthz says why
            fail(web.HTTPServiceUnavailable, "presence is unavailable: cannot read Redis")
        with service.held_online(client_id, scope.rooms, scope.data):
            return await serve_stream(
                request,
                service,
                subscriber,
                expiry,
                lambda sse: _write(sse, stream, start),
            )


async def _write(sse: EventSourceResponse, stream: ScopedStream, start: Start) -> None:
    """Write the start, then what is routed to the stream."""
    subscriber = stream.subscriber
    scope = subscriber.scope
    frames = ScopedFrames(scope.tag, scope.rooms, watch=scope.watch is not None)
    await write_pieces(sse, subscriber, _start_frames(frames, subscriber.client, start))
    while found := await stream.next():
        if isinstance(found, Start):
            await write_pieces(sse, subscriber, _start_frames(frames, subscriber.client, found))
            continue
        with subscriber.writing():
            await sse.write(_frames(frames, found))


def _start_frames(frames: ScopedFrames, client: str | None, start: Start) -> bytes:
    """The snapshot frame (the client left out) or the replayed events, then the counts."""
    if (snapshot := start.snapshot) is None:
        frames.start(start.positions)
        return _frames(frames, start.items)
    clients = None if snapshot.watched is None else snapshot.watched.array(client)
    rooms = [(members.room, members.array(client)) for members in snapshot.rooms]
    head = frames.snapshot(start.positions, clients, rooms, reset=snapshot.reset)
    return head + _frames(frames, start.items)


def _frames(frames: ScopedFrames, items: Sequence[Item]) -> bytes:
    out: list[bytes] = []
    for item in items:
        if isinstance(item, Occupancy):
            out.append(occupancy_frame(item.room, item.count))
        elif isinstance(item, RoomDelivery):
            out.append(frames.event(item.room, item.id, item.body))
        else:  # a watched client's: its frame's data, encoded once for all
            out.append(frames.event(None, item.event_id, event_data(item.frame)))
    return b"".join(out)
