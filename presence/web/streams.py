"""``GET /clients/{id}/events``: the checks every stream passes, then the
global stream (``sse``) or a scoped one (``scoped_sse``)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from .requests import authorize, client_id_of, fail, presence_of
from .scope_query import scope_of
from .scoped_sse import scoped_events
from .sse import global_events


async def client_events(request: web.Request) -> web.StreamResponse:
    client_id = client_id_of(request)
    presence = presence_of(request)
    claims = authorize(request)
    if claims is not None and claims.sub != client_id:
        fail(web.HTTPForbidden, "the token is for another client id")
    settings = presence.settings
    scope = scope_of(request, settings, claims)
    if presence.deliveries.connections >= settings.max_connections:
        fail(web.HTTPServiceUnavailable, "this server holds all the connections it may")
    if presence.deliveries.connections_of(client_id) >= settings.max_connections_per_client:
        fail(web.HTTPTooManyRequests, "too many connections for this client id")
    # The stream ends when its token expires; the client reconnects with a fresh one.
    loop = asyncio.get_running_loop()
    expiry = None if claims is None else loop.time() + claims.exp - time.time()
    # Browsers resend the last id they saw by themselves when they reconnect.
    resume = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or None
    if scope is None:
        return await global_events(request, presence, client_id, resume, expiry)
    return await scoped_events(request, presence, client_id, scope, resume, expiry)
