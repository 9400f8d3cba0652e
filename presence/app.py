"""The aiohttp application, standalone or mounted into another one."""

from __future__ import annotations

from collections.abc import AsyncIterator

from aiohttp import web

from .http import METRICS, PRESENCE, add_routes
from .metrics import registry_for
from .service import Presence
from .settings import Settings


def create_app(settings: Settings | None = None) -> web.Application:
    """A standalone presence application; its Presence is ``app[PRESENCE]``."""
    app = web.Application()
    _install(app, Presence(settings))
    return app


def setup(
    app: web.Application, settings: Settings | None = None, *, prefix: str = "/presence"
) -> Presence:
    """Mount presence under ``prefix`` in ``app``; returns it for ``track()`` and ``changes()``.

    Presence starts and stops with ``app`` (through ``cleanup_ctx``).
    """
    presence = Presence(settings)
    subapp = web.Application()
    _install(subapp, presence)
    app.add_subapp(prefix, subapp)
    return presence


def _install(app: web.Application, presence: Presence) -> None:
    app[PRESENCE] = presence
    app[METRICS] = registry_for(presence)
    add_routes(app)
    app.cleanup_ctx.append(_run_presence)


async def _run_presence(app: web.Application) -> AsyncIterator[None]:
    presence = app[PRESENCE]
    await presence.start()
    yield
    await presence.close()
