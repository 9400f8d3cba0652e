"""The aiohttp application, standalone or mounted into another one."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import aiohttp_cors
from aiohttp import web

from ..presence import Presence
from ..settings import Settings
from .addresses import AddressCounts
from .auth import Verifier
from .metrics import registry_for
from .requests import ADDRESSES, METRICS, PRESENCE, SERVICE, VERIFIER
from .routes import add_routes

log = logging.getLogger(__name__)


def create_app(settings: Settings | None = None) -> web.Application:
    """A standalone presence application; its Presence is ``app[PRESENCE]``."""
    app = web.Application()
    _install(app, Presence(settings))
    return app


def setup(
    app: web.Application, settings: Settings | None = None, *, prefix: str = "/presence"
) -> Presence:
    """Mount presence under ``prefix`` in ``app``; returns it for ``track()`` and
    ``changes()``, and sets it as ``app[PRESENCE]`` for ``app``'s handlers.

    Presence starts and stops with ``app`` (through ``cleanup_ctx``).
    """
    presence = Presence(settings)
    subapp = web.Application()
    _install(subapp, presence)
    app.add_subapp(prefix, subapp)
    app[PRESENCE] = presence
    return presence


def _install(app: web.Application, presence: Presence) -> None:
    app[PRESENCE] = presence
    app[SERVICE] = service = presence._service
    app[METRICS] = registry_for(service)
    app[VERIFIER] = Verifier(presence.settings)  # a bad key file fails here, at once
    app[ADDRESSES] = AddressCounts()
    add_routes(app)
    if origins := presence.settings.origins:
        options = aiohttp_cors.ResourceOptions(  # type: ignore[no-untyped-call]
            allow_credentials=True,
            allow_headers=("Authorization", "Last-Event-ID", "Content-Type"),
            allow_methods=("GET", "PUT"),
        )
        cors = aiohttp_cors.setup(app, defaults=dict.fromkeys(origins, options))
        for route in list(app.router.routes()):
            cors.add(route)
    app.cleanup_ctx.append(_run_presence)


async def _run_presence(app: web.Application) -> AsyncIterator[None]:
    presence = app[PRESENCE]
    if not app[VERIFIER].enabled:
        log.warning(
            "authentication is off: anyone who can reach this server can claim any "
            "client id and read who is online; set --auth-secret or --auth-public-key"
        )
    await presence.start()
    yield
    await presence.close()
