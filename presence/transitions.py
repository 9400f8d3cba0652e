"""Calls of the Lua scripts in ``scripts``, registered once per Redis client."""

from __future__ import annotations

from typing import Any

from redis.asyncio.client import Pipeline

from . import scripts
from .connection import Redis, text
from .events import OnlineClient
from .settings import Settings


class Transitions:
    """The only writer of online keys, the deadline index and the presence stream."""

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        self._keys = settings.keys
        self._ttl_ms = settings.ttl_ms
        self._maxlen = settings.presence_maxlen
        self._heartbeat = redis.register_script(scripts.HEARTBEAT)
        self._offline = redis.register_script(scripts.OFFLINE)
        self._due = redis.register_script(scripts.DUE)
        self._snapshot = redis.register_script(scripts.SNAPSHOT)

    def _client_keys(self, client: str) -> list[str]:
        k = self._keys
        return [k.online(client), k.deadlines, k.servers, k.presence]

    def heartbeat(self, pipe: Pipeline, client: str, server: str, sent_ms: int = 0) -> None:
        """Queue one heartbeat: 1 = came online, 0 = refreshed, -1 = too old."""
        self._heartbeat(  # type: ignore[unused-coroutine]  # queued on the pipeline
            keys=self._client_keys(client),
            args=[client, server, self._ttl_ms, self._maxlen, sent_ms],
            client=pipe,
        )

    def offline(self, pipe: Pipeline, client: str) -> None:
        """Queue an OFFLINE check: 1 = published, 0 = still online or already out."""
        self._offline(  # type: ignore[unused-coroutine]  # queued on the pipeline
            keys=self._client_keys(client), args=[client, self._maxlen], client=pipe
        )

    async def due(self, limit: int) -> list[str]:
        """Announced clients whose deadline has passed, earliest first."""
        found: list[bytes] = await self._due(keys=[self._keys.deadlines], args=[limit])
        return [c.decode() for c in found]

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the presence stream position they are exact at."""
        raw: list[Any] = await self._snapshot(keys=[self._keys.servers, self._keys.presence])
        position, flat = raw
        clients = [
            OnlineClient(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)
        ]
        return text(position), clients

    def pipeline(self) -> Pipeline:
        return self._redis.pipeline(transaction=False)
