"""HTTP: the SSE stream per client, the read endpoints and ``/healthz``.

Every error leaves as JSON ``{"error": ...}``; no traceback reaches a client.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from pathlib import Path
from typing import Any, NoReturn

from aiohttp import web
from aiohttp_sse import EventSourceResponse, sse_response
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from redis.exceptions import RedisError

from .auth import Claims, Unauthorized, Verifier, token_of
from .contract import ID_RULE, OFFLINE, ONLINE, is_valid_id
from .events import stream_position
from .local import Resync, Subscriber
from .replay import Replay
from .service import Presence
from .snapshot import Snapshot

log = logging.getLogger(__name__)

PRESENCE = web.AppKey("presence", Presence)
METRICS = web.AppKey("presence metrics", CollectorRegistry)
VERIFIER = web.AppKey("presence token verifier", Verifier)
#: How long a new SSE connection waits for its snapshot before a 503.
SNAPSHOT_TIMEOUT = 10.0
_ID_PATH = "{client_id:[^/]*}"


STATIC = Path(__file__).parent / "static"
#: The demo page's files: served by name, nothing else from the directory.
_ASSETS = {"demo.js", "demo.css"}


def add_routes(app: web.Application) -> None:
    app.router.add_get("/", demo_page)
    app.router.add_get("/static/{name}", demo_asset)
    app.router.add_get("/clients", list_clients)
    app.router.add_get(f"/clients/{_ID_PATH}", get_client)
    app.router.add_get(f"/clients/{_ID_PATH}/events", client_events, allow_head=False)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/metrics", metrics)
    app.middlewares.append(json_errors)
    app.on_shutdown.append(_close_streams)


async def demo_page(request: web.Request) -> web.FileResponse:
    """A page to look at: who is online, live, in plain HTML and JavaScript."""
    return web.FileResponse(STATIC / "index.html")


async def demo_asset(request: web.Request) -> web.FileResponse:
    name = request.match_info["name"]
    if name not in _ASSETS:
        _fail(web.HTTPNotFound, "not found")
    return web.FileResponse(STATIC / name)


async def list_clients(request: web.Request) -> web.Response:
    _authorize_read(request)
    online = await _presence(request).online()
    clients = [{"client": c.client, "server": c.server} for c in online]
    return web.json_response({"clients": clients, "count": len(clients)})


async def get_client(request: web.Request) -> web.Response:
    client_id = _client_id(request)
    _authorize_read(request)
    found = await _presence(request).status(client_id)
    if found is None:
        return web.json_response({"client": client_id, "status": OFFLINE, "server": None})
    return web.json_response({"client": client_id, "status": ONLINE, "server": found.server})


async def client_events(request: web.Request) -> web.StreamResponse:
    """SSE: a ``snapshot`` event (or, resuming, the missed events), then every
    ``presence`` event about others."""
    client_id = _client_id(request)
    presence = _presence(request)
    claims = _authorize(request)
    if claims is not None and claims.sub != client_id:
        _fail(web.HTTPForbidden, "the token is for another client id")
    settings = presence.settings
    if presence.local.connections >= settings.max_connections:
        _fail(web.HTTPServiceUnavailable, "this server holds all the connections it may")
    if presence.local.holds(client_id) >= settings.max_connections_per_client:
        _fail(web.HTTPTooManyRequests, "too many connections for this client id")
    # The stream ends when its token expires; the client reconnects with a fresh one.
    loop = asyncio.get_running_loop()
    expiry = None if claims is None else loop.time() + claims.exp - time.time()
    transport = request.transport
    # Browsers resend the last id they saw by themselves when they reconnect.
    resume = request.headers.get("Last-Event-ID") or request.query.get("lastEventId") or None

    def alive() -> bool:
        return request.transport is not None and not request.transport.is_closing()

    async with presence.connect(
        client_id, alive=alive, abort=transport.abort if transport else None
    ) as subscriber:
        try:
            async with asyncio.timeout(SNAPSHOT_TIMEOUT):
                replay = await presence.replay(resume) if resume else None
                start = replay or await presence.snapshot()
        except (TimeoutError, RedisError, OSError) as exc:
            log.debug("no snapshot for %s: %s", client_id, exc)  # healthz says why
            _fail(web.HTTPServiceUnavailable, "presence is unavailable: cannot read Redis")
        async with sse_response(request, ping_interval=settings.keepalive_interval) as sse:
            try:
                async with asyncio.timeout_at(expiry):
                    await _stream(sse, presence, subscriber, client_id, start, resumed=bool(resume))
            except TimeoutError:
                log.debug("the token of %s expired: closing its stream", client_id)
            except ConnectionError:
                pass  # the client left
            except (RedisError, OSError) as exc:
                log.debug("no fresh snapshot for %s: %s", client_id, exc)  # it reconnects
        return sse


async def _stream(
    sse: EventSourceResponse,
    presence: Presence,
    subscriber: Subscriber,
    client_id: str,
    start: Snapshot | Replay,
    *,
    resumed: bool,
) -> None:
    """Write the start (a snapshot, or the replayed events), then live events."""
    if isinstance(start, Snapshot):
        # A resume that cannot be exact gets a snapshot marked as a reset.
        await sse.write(start.sse_frame(exclude=client_id, reset=resumed))
    elif missed := [d.frame for d in start.deliveries if d.client != client_id]:
        await sse.write(b"".join(missed))
    # Events up to that position were sent already.
    after: tuple[int, int] | None = stream_position(start.position)
    while True:
        try:
            batch = await subscriber.get_many()
        except Resync:
            snapshot = await presence.snapshot()
            await sse.write(snapshot.sse_frame(exclude=client_id, reset=True))
            after = stream_position(snapshot.position)
            continue
        if not batch:
            return
        if after is not None:
            batch = [d for d in batch if stream_position(d.id) > after]
            if not batch:
                continue
            after = None
        await sse.write(b"".join(d.frame for d in batch))


def _authorize(request: web.Request) -> Claims | None:
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
        _fail(web.HTTPUnauthorized, str(exc), headers={"WWW-Authenticate": "Bearer"})


def _authorize_read(request: web.Request) -> None:
    if _presence(request).settings.auth_reads:
        _authorize(request)


async def healthz(request: web.Request) -> web.Response:
    presence = _presence(request)
    problems = await presence.problems()
    body: dict[str, Any] = {"server": presence.settings.server_id}
    if problems:
        body.update(status="unavailable", problems=problems)
        return web.json_response(body, status=503)
    body.update(status="ok", connections=presence.local.connections)
    return web.json_response(body)


async def metrics(request: web.Request) -> web.Response:
    """Prometheus text format."""
    _authorize_read(request)
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
    except (RedisError, OSError) as exc:
        log.warning("%s %s: Redis failed: %s", request.method, request.path, exc)
        return web.json_response(
            {"error": "presence is unavailable: cannot read Redis"}, status=503
        )
    except Exception:
        log.exception("%s %s failed", request.method, request.path)
        return web.json_response({"error": "internal server error"}, status=500)


async def _close_streams(app: web.Application) -> None:
    # Open SSE responses would otherwise hold shutdown for its whole timeout.
    app[PRESENCE].local.close_all("shutdown")


def _presence(request: web.Request) -> Presence:
    return request.config_dict[PRESENCE]


def _client_id(request: web.Request) -> str:
    client_id = request.match_info["client_id"]
    if not is_valid_id(client_id):
        _fail(web.HTTPBadRequest, f"client id {ID_RULE}")
    return client_id


def _fail(
    kind: type[web.HTTPException], message: str, headers: dict[str, str] | None = None
) -> NoReturn:
    raise kind(
        text=json.dumps({"error": message}), content_type="application/json", headers=headers
    )
