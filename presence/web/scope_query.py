"""The scope a stream asks for in its query: ``room``, ``watch``, ``occupancy``, ``data``.

Everything is checked before Redis is touched: a hostile query gets a 400 (or
a 403 for a room the token does not cover), never a 500.
"""

from __future__ import annotations

from aiohttp import web

from ..contract import ID_RULE, is_valid_id
from ..entries import member_data
from ..settings import Settings
from ..updates.scoped import Scope
from .auth import Claims
from .requests import fail

#: Query parameters that make a stream scoped.
SCOPED = ("room", "watch", "occupancy")


def scope_of(request: web.Request, settings: Settings, claims: Claims | None) -> Scope | None:
    """The stream's scope; None for a global stream (no ``room``, ``watch`` or
    ``occupancy``)."""
    query = request.query
    data = query.getall("data", [])
    if not any(name in query for name in SCOPED):
        if data:
            fail(web.HTTPBadRequest, "data needs a room: add room=<name>")
        return None
    if len(data) > 1:
        fail(web.HTTPBadRequest, "data may be given once")
    rooms = _ids(query.getall("room", []), "room")
    occupancy = _ids(query.getall("occupancy", []), "occupancy room")
    if len({*rooms, *occupancy}) > settings.max_rooms_per_connection:
        fail(
            web.HTTPBadRequest,
            f"a stream may ask for at most {settings.max_rooms_per_connection} rooms",
        )
    watch: frozenset[str] | None = None
    if "watch" in query:
        watched = _ids(query.getall("watch"), "watched client id")
        if len(watched) > settings.max_watch:
            fail(web.HTTPBadRequest, f"a stream may watch at most {settings.max_watch} ids")
        watch = frozenset(watched)
    encoded = None
    if data:
        if not rooms:
            fail(web.HTTPBadRequest, "data needs a room: add room=<name>")
        try:
            encoded = member_data(data[0])
        except ValueError as exc:
            fail(web.HTTPBadRequest, str(exc))
    if claims is not None:
        for room in (*rooms, *occupancy):
            if not claims.may_join(room):
                fail(web.HTTPForbidden, f"the token does not allow room {room}")
    return Scope(rooms, watch, occupancy, encoded)


def _ids(values: list[str], what: str) -> tuple[str, ...]:
    """Valid ids, each once, in the order given."""
    for value in values:
        if not is_valid_id(value):
            fail(web.HTTPBadRequest, f"{what} {ID_RULE}")
    return tuple(dict.fromkeys(values))
