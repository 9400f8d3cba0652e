"""Room endpoints: ``GET /rooms/{room}`` and ``PUT /rooms/{room}/clients/{id}/data``."""

from __future__ import annotations

import json

from aiohttp import web

from ..contract import MAX_DATA_BYTES
from ..wire import member_data
from .requests import authorize, authorize_read, client_id_of, fail, presence_of, room_of


async def get_room(request: web.Request) -> web.Response:
    """``{"room", "clients": [{"client", "server", "data"?}, ...], "count"}``."""
    room = room_of(request)
    claims = authorize_read(request)
    if claims is not None and not claims.may_join(room):
        fail(web.HTTPForbidden, f"the token does not allow room {room}")
    snapshot = await presence_of(request).room(room)
    clients = [m.to_dict() for m in snapshot.members]
    return web.json_response({"room": room, "clients": clients, "count": len(clients)})


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
    if request.content_length is not None and request.content_length > 16 * MAX_DATA_BYTES:
        fail(web.HTTPRequestEntityTooLarge, f"data must be at most {MAX_DATA_BYTES} bytes")
    body = await request.content.read(16 * MAX_DATA_BYTES + 1)
    try:
        data = json.loads(member_data(body))
    except ValueError as exc:
        fail(web.HTTPBadRequest, str(exc))
    changed = await presence_of(request).set_data(room, client_id, data)
    if changed is None:
        fail(web.HTTPNotFound, f"{client_id} is not in room {room}")
    return web.json_response({"room": room, "client": client_id, "data": data, "changed": changed})
