"""What every handler needs from a request: its service, its client id,
its verified token; and failing it with a JSON body."""

from __future__ import annotations

import json
from typing import NoReturn

from aiohttp import web
from prometheus_client import CollectorRegistry

from ..contract import ID_RULE, is_valid_id
from ..presence import Presence
from ..service import Service
from .addresses import AddressCounts
from .auth import Claims, Unauthorized, Verifier, token_of

PRESENCE = web.AppKey("presence", Presence)
#: What the handlers use: the service behind ``PRESENCE``, set with it.
SERVICE = web.AppKey("presence service", Service)
METRICS = web.AppKey("presence metrics", CollectorRegistry)
VERIFIER = web.AppKey("presence token verifier", Verifier)
ADDRESSES = web.AppKey("presence streams per address", AddressCounts)


def authorize(request: web.Request) -> Claims | None:
    """The verified claims of the request's token; None when authentication is off."""
    verifier = request.config_dict[VERIFIER]
    if not verifier.enabled:
        return None
    token = token_of(request)
    try:
        if token is None:
            raise Unauthorized("a token is required")
        return verifier.verify(token)
    except Unauthorized as exc:
        fail(web.HTTPUnauthorized, str(exc), headers={"WWW-Authenticate": "Bearer"})


def authorize_read(request: web.Request) -> Claims | None:
    """``authorize`` when reads need a token too."""
    if service_of(request).settings.auth_reads:
        return authorize(request)
    return None


def service_of(request: web.Request) -> Service:
    return request.config_dict[SERVICE]


def client_id_of(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if not is_valid_id(client_id):
        fail(web.HTTPBadRequest, f"client id {ID_RULE}")
    return client_id


def room_of(request: web.Request) -> str:
    room = request.match_info["room"]
    if not is_valid_id(room):
        fail(web.HTTPBadRequest, f"room {ID_RULE}")
    return room


def fail(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> NoReturn:
    raise kind(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )
