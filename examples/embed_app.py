"""An existing aiohttp application that mounts presence under ``/presence``.

    python examples/embed_app.py --port 8000 [--redis-url redis://localhost:6379/0]

Routes of the application itself:

    GET /            a short description
    GET /online      who is online, read through the library
    GET /ws/{user}   a WebSocket; ``user`` is online while it is open

Routes added by presence: ``/presence/clients``, ``/presence/clients/<id>``,
``/presence/clients/<id>/events`` (Server-Sent Events) and ``/presence/healthz``.
Every change of presence is also written to this application's log.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Sequence

from aiohttp import WSCloseCode, WSMsgType, web

import presence

log = logging.getLogger("embed_app")

#: The WebSockets open right now, closed on shutdown.
SOCKETS = web.AppKey[set[web.WebSocketResponse]]("sockets")


async def index(request: web.Request) -> web.Response:
    return web.json_response(
        {"app": "embed_app", "websocket": "/ws/{user}", "presence": "/presence/clients"}
    )


async def online(request: web.Request) -> web.Response:
    service = request.app[presence.PRESENCE]
    clients = await service.online()
    return web.json_response({"online": [c.client for c in clients]})


async def websocket(request: web.Request) -> web.WebSocketResponse:
    """Echo text messages; the user stays online for as long as the socket is open."""
    user = request.match_info["user"]
    service = request.app[presence.PRESENCE]
    sockets = request.app[SOCKETS]
    ws = web.WebSocketResponse(heartbeat=30)
    try:
        # track() checks the id before the block runs, so a bad one gets a plain 400.
        async with service.track(user):
            await ws.prepare(request)
            sockets.add(ws)
            try:
                await ws.send_json({"user": user, "status": presence.ONLINE})
                async for message in ws:
                    if message.type == WSMsgType.TEXT:
                        await ws.send_json({"user": user, "echo": message.data})
            finally:
                sockets.discard(ws)
    except presence.InvalidClientId as exc:
        raise web.HTTPBadRequest(text=f"user {exc}\n") from None
    return ws


async def close_sockets(app: web.Application) -> None:
    # Open WebSockets would otherwise hold the shutdown until its timeout.
    sockets = app[SOCKETS]
    for ws in list(sockets):
        await ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutdown")


async def log_changes(app: web.Application) -> AsyncIterator[None]:
    """Run a background task that logs every presence event while the app runs."""
    service = app[presence.PRESENCE]

    async def watch() -> None:
        async with service.changes() as events:
            async for event in events:
                if isinstance(event, presence.Reset):  # entries were lost: start over
                    log.info("%d clients online", len(event.clients))
                    continue
                log.info("%s is %s (server %s)", event.client, event.status, event.server)

    task = asyncio.create_task(watch(), name="log presence changes")
    yield
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


def build_app(settings: presence.Settings) -> web.Application:
    app = web.Application()
    app.router.add_get("/", index)
    app.router.add_get("/online", online)
    app.router.add_get("/ws/{user}", websocket)
    app[SOCKETS] = set()
    app.on_shutdown.append(close_sockets)
    # Presence starts and stops with this application; it is app[presence.PRESENCE].
    presence.setup(app, settings, prefix="/presence")
    app.cleanup_ctx.append(log_changes)
    return app


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="An aiohttp app with presence mounted.")
    parser.add_argument("--host", default="127.0.0.1", help="default 127.0.0.1")
    parser.add_argument("--port", type=int, default=8000, help="default 8000")
    parser.add_argument(
        "--redis-url", default="memory://", help="default memory:// (in-process Redis)"
    )
    parser.add_argument(
        "--heartbeat-interval", type=float, default=5.0, metavar="SECONDS", help="default 5"
    )
    args = parser.parse_args(argv)
    try:
        settings = presence.Settings(
            port=args.port,  # only used for the default server id, <host name>:<port>
            redis_url=args.redis_url,
            heartbeat_interval=args.heartbeat_interval,
        )
    except presence.ConfigError as exc:
        parser.error(str(exc))
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    web.run_app(
        build_app(settings),
        host=args.host,
        port=args.port,
        print=lambda _: log.info("listening on http://%s:%d", args.host, args.port),
        shutdown_timeout=5,
    )


if __name__ == "__main__":
    main()
