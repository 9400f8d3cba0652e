"""Room endpoints: ``GET /rooms/{room}``, ``GET /rooms/{room}/clients/{id}`` and
``PUT /rooms/{room}/clients/{id}/data``."""

from __future__ import annotations

import asyncio
import json

from aiohttp import web

from .. import last_seen
from ..contract import MAX_DATA_BYTES, OFFLINE, ONLINE
from ..entries import member_data
from ..errors import RoomUnreadable
from .protocol import count_timeout
from .requests import authorize, authorize_read, client_id_of, fail, room_of, service_of

#: The largest body read: data is compared in canonical form, so its JSON
#: may carry more whitespace than the 1 KB it stands for.
MAX_BODY_BYTES = 16 * MAX_DATA_BYTES


async def get_room(request: web.Request) -> web.Response:
    """``{"room", "clients": [{"client", "server", "data"?}, ...], "count"}``."""
    room = room_of(request)
    claims = authorize_read(request)
    if claims is not None and not claims.may_join(room):
        fail(web.HTTPForbidden, f"the token does not allow room {room}")
    try:
        snapshot = await service_of(request).room(room)
    except RoomUnreadable as exc:
        fail(web.HTTPServiceUnavailable, str(exc))
    clients = [m.to_dict() for m in snapshot.members]
    return web.json_response({"room": room, "clients": clients, "count": len(clients)})


async def get_member(request: web.Request) -> web.Response:
    """``{"room", "client", "status", "server", "data"?}``; an offline member's
    has ``last_seen`` and ``last_seen_iso`` in place of data."""
    room = room_of(request)
    client_id = client_id_of(request)
    claims = authorize_read(request)
    if claims is not None and not claims.may_join(room):
        fail(web.HTTPForbidden, f"the token does not allow room {room}")
    service = service_of(request)
    found = await service.member(room, client_id)
    if found is None:
        seen = last_seen.fields(await service.last_seen(client_id, room))
        body = {"room": room, "client": client_id, "status": OFFLINE, "server": None, **seen}
        return web.json_response(body)
    return web.json_response({"room": room, "status": ONLINE, **found.to_dict()})


async def put_data(request: web.Request) -> web.Response:
    """Replace a member's data: one UPDATE when it changed, nothing when not."""
    room = room_of(request)
    client_id = client_id_of(request)
    claims = authorize(request)
    if claims is not None:
        if claims.sub != client_id:
            fail(web.HTTPForbidden, "the token is for another client id")
        if not claims.may_join(room):
            fail(web.HTTPForbidden, f"the token does not allow room {room}")
    try:
        body = await _body(request, within=service_of(request).settings.request_timeout)
    except TimeoutError:
        return await _too_late(request)
    try:
        data = json.loads(member_data(body))
    except ValueError as exc:
        fail(web.HTTPBadRequest, str(exc))
    changed = await service_of(request).set_data(room, client_id, data)
    if changed is None:
        fail(web.HTTPNotFound, f"{client_id} is not in room {room}")
    return web.json_response({"room": room, "client": client_id, "data": data, "changed": changed})


async def _body(request: web.Request, *, within: float) -> bytes:
    """The whole body, within ``within`` seconds (else ``TimeoutError``); a
    413 past ``MAX_BODY_BYTES``."""
    too_large = f"data must be at most {MAX_DATA_BYTES} bytes"
    if request.content_length is not None and request.content_length > MAX_BODY_BYTES:
        fail(web.HTTPRequestEntityTooLarge, too_large)
    body = bytearray()
    async with asyncio.timeout(within):
        # read(n) returns what has arrived so far: read until the end.
        while chunk := await request.content.read(MAX_BODY_BYTES + 1 - len(body)):
            body += chunk
            if len(body) > MAX_BODY_BYTES:
                fail(web.HTTPRequestEntityTooLarge, too_large)
    return bytes(body)


async def _too_late(request: web.Request) -> web.Response:
    """The 408 for a body that did not arrive in time, sent now, and the
    connection closed: aiohttp would otherwise wait to read the rest of the
    body (its lingering time) first."""
    count_timeout(request)
    late = web.json_response({"error": "the request body did not arrive in time"}, status=408)
    late.force_close()
    await late.prepare(request)
    await late.write_eof()
    request.protocol.force_close()
    return late
