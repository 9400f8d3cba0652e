"""The SSE stream of one client: ``GET /clients/{id}/events``.

The connection subscribes first, so that nothing published while its start
is read is missed; it reads its start (a snapshot, or the events after its
``Last-Event-ID``); only then does it hold its client online. A request
refused with 503 because Redis cannot be read has held nothing, so it leaves
nothing to announce when it ends.
"""

from __future__ import annotations

import asyncio
import logging
import time

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from redis.exceptions import RedisError

from ..presence import Presence
from ..updates.deliveries import WRITE_BYTES, Resync, Subscriber
from ..updates.replay import Replay
from ..updates.snapshot import Snapshot
from ..wire import SEPARATOR, stream_position
from .requests import authorize, client_id_of, fail, presence_of

log = logging.getLogger(__name__)

#: How long a new SSE connection waits for its snapshot before a 503.
SNAPSHOT_TIMEOUT = 10.0


async def client_events(request: web.Request) -> web.StreamResponse:
    """SSE: a ``snapshot`` event (or, resuming, the missed events), then every
    ``presence`` event about others."""
    client_id = client_id_of(request)
    presence = presence_of(request)
    claims = authorize(request)
    if claims is not None and claims.sub != client_id:
        fail(web.HTTPForbidden, "the token is for another client id")
    settings = presence.settings
    if presence.deliveries.connections >= settings.max_connections:
        fail(web.HTTPServiceUnavailable, "this server holds all the connections it may")
    if presence.deliveries.connections_of(client_id) >= settings.max_connections_per_client:
        fail(web.HTTPTooManyRequests, "too many connections for this client id")
    # The stream ends when its token expires; the client reconnects with a fresh one.
    loop = asyncio.get_running_loop()
    expiry = None if claims is None else loop.time() + claims.exp - time.time()
    # Browsers resend the last id they saw by themselves when they reconnect.
    resume = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or None

    transport = request.transport
    if transport is None:
        fail(web.HTTPServiceUnavailable, "the connection closed")
    is_closing = transport.is_closing

    def alive() -> bool:
        return not is_closing()

    abort, buffered = transport.abort, transport.get_write_buffer_size
    with presence.subscribed(client_id, alive=alive, abort=abort, buffered=buffered) as subscriber:
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                replay = await presence.replay(resume) if resume else None
                start = replay or await presence.snapshot()
        except (TimeoutError, RedisError, OSError) as exc:
            log.debug("no snapshot for %s: %s", client_id, exc)  # healthz says why
            fail(web.HTTPServiceUnavailable, "presence is unavailable: cannot read Redis")
        with presence.held_online(client_id):
            async with sse_response(
                request, sep=SEPARATOR, ping_interval=settings.keepalive_interval
            ) as sse:
                try:
                    async with asyncio.timeout_at(expiry):
                        await _stream(
                            sse, presence, subscriber, client_id, start, resumed=bool(resume)
                        )
                except TimeoutError:
                    log.debug("the token of %s expired: closing its stream", client_id)
                except ConnectionError:
                    pass  # the client left
                except (RedisError, OSError) as exc:
                    log.debug("no fresh snapshot for %s: %s", client_id, exc)  # it reconnects
            return sse


async def _stream(
    sse: EventSourceResponse,
    presence: Presence,
    subscriber: Subscriber,
    client_id: str,
    start: Snapshot | Replay,
    *,
    resumed: bool,
) -> None:
    """Write the start (a snapshot, or the replayed events), then live events."""
    if isinstance(start, Snapshot):
        # A resume that cannot be exact gets a snapshot marked as a reset.
        await _write_snapshot(sse, subscriber, start.sse_frame(exclude=client_id, reset=resumed))
    elif missed := [d.frame for d in start.deliveries if d.client != client_id]:
        with subscriber.writing():
            await sse.write(b"".join(missed))
    # Events up to that position were sent already.
    after: tuple[int, int] | None = stream_position(start.position)
    while True:
        try:
            segments = await subscriber.segments()
        except Resync:
            snapshot = await presence.snapshot()
            frame = snapshot.sse_frame(exclude=client_id, reset=True)
            await _write_snapshot(sse, subscriber, frame)
            after = stream_position(snapshot.position)
            continue
        if not segments:
            return
        # Whole segments, whole frames: a write never splits an event.
        data = b"".join(s.frames(client_id, after) for s in segments)
        if after is not None and segments[-1].last > after:
            after = None  # past the start: no more filtering
        if data:
            with subscriber.writing():
                await sse.write(data)


async def _write_snapshot(sse: EventSourceResponse, subscriber: Subscriber, frame: bytes) -> None:
    # In pieces: aiohttp waits for the connection to drain every 64 KB, so a
    # snapshot of 10,000 clients is not all buffered at once.
    view = memoryview(frame)
    for offset in range(0, len(view), WRITE_BYTES):
        with subscriber.writing():
            await sse.write(view[offset : offset + WRITE_BYTES])
