"""``GET /clients/{id}/events``: the checks every stream passes, then the
global stream (``sse``) or a scoped one (``scoped_sse``)."""

from __future__ import annotations

import asyncio
import time

from aiohttp import web

from ..service import Service
from ..updates.scoped import Scope
from .addresses import client_address
from .protocol import on_connection_lost
from .requests import ADDRESSES, authorize, client_id_of, fail, service_of
from .scope_query import scope_of
from .scoped_sse import scoped_events
from .sse import global_events


async def client_events(request: web.Request) -> web.StreamResponse:
    client_id = client_id_of(request)
    service = service_of(request)
    claims = authorize(request)
    if claims is not None and claims.sub != client_id:
        fail(web.HTTPForbidden, "the token is for another client id")
    settings = service.settings
    scope = scope_of(request, settings, claims)
    # The stream ends when its token expires; the client reconnects with a fresh one.
    loop = asyncio.get_running_loop()
    expiry = None if claims is None else loop.time() + claims.exp - time.time()
    if service.connections.open >= settings.max_connections:
        fail(web.HTTPServiceUnavailable, "this server holds all the connections it may")
    if service.connections.open_of(client_id) >= settings.max_connections_per_client:
        fail(web.HTTPTooManyRequests, "too many connections for this client id")
    # Checked here, and counted when the stream subscribes, with no wait between.
    new = 0 if scope is None else service.scopes.new_rooms(scope)
    if new and service.scopes.followed + new > settings.max_rooms:
        fail(
            web.HTTPServiceUnavailable,
            f"this server follows at most {settings.max_rooms} rooms: try another server",
        )
    if not settings.max_connections_per_address:
        return await _events(request, service, client_id, scope, expiry)
    address = client_address(request, settings.networks)
    addresses = request.config_dict[ADDRESSES]
    if addresses[address] >= settings.max_connections_per_address:
        fail(web.HTTPTooManyRequests, "too many connections from this address")
    with addresses.held(address) as release:
        forget = on_connection_lost(request, release)
        try:
            return await _events(request, service, client_id, scope, expiry)
        finally:
            forget()


async def _events(
    request: web.Request,
    service: Service,
    client_id: str,
    scope: Scope | None,
    expiry: float | None,
) -> web.StreamResponse:
    # Browsers resend the last id they saw by themselves when they reconnect.
    resume = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or None
    if scope is None:
        return await global_events(request, service, client_id, resume, expiry)
    return await scoped_events(request, service, client_id, scope, resume, expiry)
