"""HTTP routes: the read endpoints, ``/healthz``, ``/metrics``, the demo page
and the browser client, and the JSON error middleware (every error leaves as
``{"error": ...}``; no traceback reaches a client). The SSE stream itself is
in ``sse``.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from .. import last_seen
from ..contract import OFFLINE, ONLINE
from ..redis_client import REDIS_FAILURES
from .requests import METRICS, SERVICE, authorize_read, client_id_of, fail, service_of
from .rooms import get_member, get_room, put_data
from .streams import client_events

log = logging.getLogger(__name__)

_ID_PATH = "{client_id:[^/]*}"


STATIC = Path(__file__).parent.parent / "static"
#: The demo page's files and the browser client (its modules and types), with
#: their types: served by name, nothing else from the directory. Small, so
#: sent from memory (a sendfile() shows no progress to the guard's watch of
#: unread responses). The .d.ts is TypeScript, not JavaScript: as text/plain a
#: browser shows it as text and refuses to import it as a module, and Deno,
#: which fetches types by URL, reads text/plain by the file's extension.
_ASSETS = {
    "demo.js": "text/javascript",
    "demo.css": "text/css",
    "presence-client.js": "text/javascript",
    "sse-parser.js": "text/javascript",
    "event-ids.js": "text/javascript",
    "members.js": "text/javascript",
    "backoff.js": "text/javascript",
    "presence-client.d.ts": "text/plain",
}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
    app.router.add_get("/static/{name}", demo_asset)
    app.router.add_get("/clients", list_clients)
    app.router.add_get(f"/clients/{_ID_PATH}", get_client)
    app.router.add_get(f"/clients/{_ID_PATH}/events", client_events, allow_head=False)
    app.router.add_get("/rooms/{room:[^/]*}", get_room)
    app.router.add_get(f"/rooms/{{room:[^/]*}}/clients/{_ID_PATH}", get_member)
    app.router.add_put(f"/rooms/{{room:[^/]*}}/clients/{_ID_PATH}/data", put_data)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.middlewares.append(json_errors)
    app.on_shutdown.append(_close_streams)


async def demo_page(request: web.Request) -> web.Response:
    """A page to look at: who is online, live, in plain HTML and JavaScript."""
    return _static("index.html", "text/html")


async def demo_asset(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    if name not in _ASSETS:
        fail(web.HTTPNotFound, "not found")
    return _static(name, _ASSETS[name])


def _static(name: str, content_type: str) -> web.Response:
    body = (STATIC / name).read_bytes()
    return web.Response(body=body, content_type=content_type, charset="utf-8")


async def list_clients(request: web.Request) -> web.Response:
    authorize_read(request)
    online = await service_of(request).online()
    clients = [{"client": c.client, "server": c.server} for c in online]
    return web.json_response({"clients": clients, "count": len(clients)})


async def get_client(request: web.Request) -> web.Response:
    client_id = client_id_of(request)
    authorize_read(request)
    service = service_of(request)
    found = await service.status(client_id)
    if found is None:
        seen = last_seen.fields(await service.last_seen(client_id))
        return web.json_response({"client": client_id, "status": OFFLINE, "server": None, **seen})
    return web.json_response({"client": client_id, "status": ONLINE, "server": found.server})


async def healthz(request: web.Request) -> web.Response:
    service = service_of(request)
    problems = await service.problems()
    body: dict[str, Any] = {"server": service.settings.server_id}
    if problems:
        body.update(status="unavailable", problems=problems)
        return web.json_response(body, status=503)
    body.update(status="ok", connections=service.connections.open)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    authorize_read(request)
    body = generate_latest(request.config_dict[METRICS])
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


@web.middleware
async def json_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    try:
        response: web.StreamResponse = await handler(request)
        return response
    except web.HTTPException as exc:
        if exc.status < 400 or exc.content_type == "application/json":
            raise
        headers = {"Allow": exc.headers["Allow"]} if "Allow" in exc.headers else None
        return web.json_response({"error": exc.reason.lower()}, status=exc.status, headers=headers)
    except asyncio.CancelledError:
        raise
    except REDIS_FAILURES as exc:
        log.warning("%s %s: Redis failed: %s", request.method, request.path, exc)
        return web.json_response(
            {"error": "presence is unavailable: cannot read Redis"}, status=503
        )
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


async def _close_streams(app: web.Application) -> None:
    # Open SSE responses would otherwise hold shutdown for its whole timeout.
    app[SERVICE].close_streams()
