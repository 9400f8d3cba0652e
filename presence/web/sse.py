"""The global SSE stream of one client: everyone's transitions.

The connection subscribes first, so that nothing published while its start
is read is missed; it reads its start (a snapshot, or the events after its
``Last-Event-ID``); only then does it hold its client online. A request
refused with 503 because Redis cannot be read has held nothing, so it leaves
nothing to announce when it ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from functools import partial

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response

from ..frames import SEPARATOR
from ..positions import Seen, seen
from ..redis_client import REDIS_FAILURES
from ..service import Service
from ..updates.connections import Connection, Resync
from ..updates.delivery_log import WRITE_BYTES, Subscriber
from ..updates.replay import Replay
from ..updates.snapshot import Snapshot
from .protocol import on_connection_lost
from .requests import fail

log = logging.getLogger(__name__)

#: How long a new SSE connection waits for its snapshot before a 503.
SNAPSHOT_TIMEOUT = 10.0


def watch_connection(
    request: web.Request,
) -> tuple[Callable[[], bool], Callable[[], None], Callable[[], int]]:
    """Whether the request's connection is open, how to drop it, and how many
    bytes it has still to send."""
    transport = request.transport
    if transport is None:
        fail(web.HTTPServiceUnavailable, "the connection closed")
    is_closing = transport.is_closing

    def alive() -> bool:
        return not is_closing()

    return alive, transport.abort, transport.get_write_buffer_size


async def serve_stream(
    request: web.Request,
    service: Service,
    connection: Connection,
    expiry: float | None,
    stream: Callable[[EventSourceResponse], Awaitable[None]],
) -> EventSourceResponse:
    """Run ``stream`` on an SSE response until the client leaves, its token
    expires, or a fresh snapshot cannot be read (the client reconnects)."""
    client_id = connection.client
    forget = on_connection_lost(request, partial(service.connections.gone, connection))
    try:
        async with sse_response(
            request, sep=SEPARATOR, ping_interval=service.settings.keepalive_interval
        ) as sse:
            try:
                async with asyncio.timeout_at(expiry):
                    await stream(sse)
            except TimeoutError:
                log.debug("the token of %s expired: closing its stream", client_id)
            except ConnectionError:
                pass  # the client left
            except REDIS_FAILURES as exc:
                log.debug("no fresh snapshot for %s: %s", client_id, exc)  # it reconnects
    finally:
        forget()
    return sse


async def global_events(
    request: web.Request,
    service: Service,
    client_id: str,
    resume: str | None,
    expiry: float | None,
) -> web.StreamResponse:
    """SSE: a ``snapshot`` event (or, resuming, the missed events), then every
    ``presence`` event about others."""
    alive, abort, buffered = watch_connection(request)
    with service.subscribed(client_id, alive=alive, abort=abort, buffered=buffered) as subscriber:
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                replay = await service.replay(resume) if resume else None
                start = replay or await service.snapshot()
        except (TimeoutError, *REDIS_FAILURES) as exc:
            log.debug("no snapshot for %s: %s", client_id, exc)  # healthz says why
            fail(web.HTTPServiceUnavailable, "presence is unavailable: cannot read Redis")
        with service.held_online(client_id):
            return await serve_stream(
                request,
                service,
                subscriber,
                expiry,
                lambda sse: _stream(
                    sse, service, subscriber, client_id, start, resumed=bool(resume)
                ),
            )


async def _stream(
    sse: EventSourceResponse,
    service: Service,
    subscriber: Subscriber,
    client_id: str,
    start: Snapshot | Replay,
    *,
    resumed: bool,
) -> None:
    """Write the start (a snapshot, or the replayed events), then live events."""
    if isinstance(start, Snapshot):
        # A resume that cannot be exact gets a snapshot marked as a reset.
        await write_pieces(sse, subscriber, start.sse_frame(exclude=client_id, reset=resumed))
    elif missed := [d.frame for d in start.deliveries if d.client != client_id]:
        with subscriber.writing():
            await sse.write(b"".join(missed))
    # Events up to that position were sent already.
    after: Seen | None = seen(start.position)
    position = start.position
    while True:
        try:
            segments = await subscriber.segments()
        except Resync:
            snapshot = await service.snapshot()
            frame = snapshot.sse_frame(exclude=client_id, reset=True)
            await write_pieces(sse, subscriber, frame)
            after, position = seen(snapshot.position), snapshot.position
            continue
        if not segments:
            return
        # Whole segments, whole frames: a write never splits an event.
        data = b"".join(s.frames(client_id, after, position) for s in segments)
        if after is not None and len(after) == 1 and segments[-1].last > after[0]:
            after = None  # past the start: no more filtering (sharded: a check per segment)
        if data:
            with subscriber.writing():
                await sse.write(data)


async def write_pieces(sse: EventSourceResponse, subscriber: Connection, frame: bytes) -> None:
    # In pieces: aiohttp waits for the connection to drain every 64 KB, so a
    # snapshot of 10,000 clients is not all buffered at once.
    view = memoryview(frame)
    for offset in range(0, len(view), WRITE_BYTES):
        with subscriber.writing():
            await sse.write(view[offset : offset + WRITE_BYTES])
