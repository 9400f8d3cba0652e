"""Calls of the Lua scripts in ``scripts``, registered once per Redis client."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from . import scripts
from .connection import Redis, text
from .contract import CONSUMER_GROUP
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
        self._leave = redis.register_script(scripts.LEAVE)
        self._due = redis.register_script(scripts.DUE)
        self._snapshot = redis.register_script(scripts.SNAPSHOT)

    def heartbeats(self, pipe: Pipeline, lines: Sequence[bytes]) -> None:
        """Queue heartbeats, each a line ``b"<client> <server> <sent>"``, as one script call.

        ``sent`` is when it was sent: Unix ms, or 0 for now, or its heartbeat
        stream entry id, which the call then acknowledges unless Redis failed
        the heartbeat. The result is one code per heartbeat (1 came online,
        0 refreshed, -1 too old, -2 failed in Redis), then the error of the
        last failure, if any.
        """
        k = self._keys
        keys = (k.deadlines, k.servers, k.presence, k.heartbeat)
        args = (self._ttl_ms, self._maxlen, k.online_prefix, k.holders_prefix)
        pipe.evalsha(self._heartbeat.sha, 4, *keys, *args, b"\n".join(lines), CONSUMER_GROUP)

    def leave(self, pipe: Pipeline, client: str, server: str) -> None:
        """Queue a leave: 1 = published OFFLINE, 0 = held elsewhere or not online."""
        k = self._keys
        keys = [k.online(client), k.deadlines, k.servers, k.presence, k.holders(client)]
        pipe.evalsha(self._leave.sha, 5, *keys, client, server, self._ttl_ms, self._maxlen)

    def offline(self, pipe: Pipeline, clients: Sequence[str]) -> None:
        """Queue OFFLINE checks of ``clients`` as one script call.

        Its result is ``[published, failed, last failure or ""]``.
        """
        k = self._keys
        args: list[str | int] = [self._maxlen, k.online_prefix, *clients]
        pipe.evalsha(self._offline.sha, 3, k.deadlines, k.servers, k.presence, *args)

    async def execute(self, fill: Callable[[Pipeline], None]) -> list[Any]:
        """Run the commands ``fill`` queues, in one round trip.

        A command's error is its result, so one bad key cannot fail a batch.
        Scripts are called by SHA alone: when Redis has lost them (a restart),
        they are loaded and the batch is sent again; every script is safe to rerun.
        """
        results: list[Any] = []
        for _ in range(2):
            pipe = self._redis.pipeline(transaction=False)
            fill(pipe)
            results = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                return results
            await self.load()
        return results

    async def load(self) -> None:
        """Load every script into Redis's script cache."""
        for script in (self._heartbeat, self._offline, self._leave, self._due, self._snapshot):
            await self._redis.script_load(script.script)

    async def due(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        """Redis's time (ms) and the clients past their deadline, with it, earliest first."""
        now, flat = await self._due(keys=[self._keys.deadlines], args=[limit])
        due = [(flat[i].decode(), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return int(now), due

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the presence stream position they are exact at."""
        raw: list[Any] = await self._snapshot(keys=[self._keys.servers, self._keys.presence])
        position, flat = raw
        clients = [
            OnlineClient(flat[i].decode(), flat[i + 1].decode()) for i in range(0, len(flat), 2)
        ]
        return text(position), clients
