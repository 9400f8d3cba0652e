"""Helpers for tests of ``presence serve`` processes: start one, read its
``GET /clients`` and ``/healthz``, poll every server for a state."""

from __future__ import annotations

from collections.abc import Awaitable, Callable

import aiohttp

from .support import ServerProcess, poll

Spawn = Callable[..., ServerProcess]


async def start_server(
    spawn: Spawn, redis_url: str, server_id: str, interval: float = 1.0
) -> ServerProcess:
    """A server on ``redis_url``, heartbeating every ``interval``, once healthy."""
    server = spawn(
        "--redis-url", redis_url,
        "--server-id", server_id,
        "--heartbeat-interval", str(interval),
        "--keepalive-interval", "0.25",
    )  # fmt: skip
    await server.wait_healthy()
    return server


def events_of(server: ServerProcess, client: str) -> str:
    return f"{server.url}/clients/{client}/events"


async def listed(session: aiohttp.ClientSession, server: ServerProcess) -> set[str]:
    async with session.get(f"{server.url}/clients") as response:
        body = await response.json()
        return {c["client"] for c in body["clients"]} if response.status == 200 else {"?"}


async def health(session: aiohttp.ClientSession, server: ServerProcess) -> int:
    async with session.get(f"{server.url}/healthz") as response:
        return response.status


async def settled(
    servers: tuple[ServerProcess, ...],
    probe: Callable[[ServerProcess], Awaitable[object]],
    expected: object,
    *,
    timeout: float,
    what: str,
) -> None:
    """Poll until ``probe`` gives ``expected`` on every server."""

    async def check() -> bool:
        return all([await probe(server) == expected for server in servers])

    await poll(check, timeout=timeout, what=what)
