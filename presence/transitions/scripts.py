"""``Transitions``: the one way the Lua scripts (``sources``) are called."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from ..contract import CONSUMER_GROUP
from ..events import OnlineClient
from ..redis_client import Redis
from ..redis_cluster import Calls, is_cluster
from ..settings import Settings
from ..wire import text
from .lua import CAME_ONLINE, FAILED, KEPT, LEFT, REFRESHED, STALE
from .sources import (
    CLAIM,
    DUE,
    FORGET,
    HEARTBEAT,
    LEAVE,
    OFFLINE,
    PUBLISH,
    ROOM_LEAVE,
    ROOM_SNAPSHOT,
    ROOM_SWEEP,
    SET_DATA,
    SNAPSHOT,
)

__all__ = ["CAME_ONLINE", "FAILED", "KEPT", "LEFT", "REFRESHED", "STALE", "Transitions"]

Arg = str | bytes | int | float


class Transitions:
    """The one way scripts are called: the only writer of online keys, the
    deadline index and the presence stream.

    Each method queues one script call on a pipeline; ``execute`` sends
    them in one round trip and ``run`` sends one. Scripts go by SHA alone:
    when Redis has lost them (a restart), they are loaded and the batch is
    sent again; every script is safe to rerun.
    """

    def __init__(self, redis: Redis, settings: Settings) -> None:
        self._redis = redis
        k = settings.keys
        self._keys = k
        self._shared = (k.deadlines, k.servers, k.presence, k.heartbeat, k.rooms_due)
        self._ttl_ms = settings.ttl_ms
        self._maxlen = settings.presence_maxlen
        self._room_maxlen = settings.room_maxlen
        sources = [HEARTBEAT, OFFLINE, LEAVE, ROOM_LEAVE, DUE, ROOM_SWEEP, SNAPSHOT]
        sources += [ROOM_SNAPSHOT, SET_DATA, CLAIM, FORGET, PUBLISH]
        self._scripts = {source: redis.register_script(source) for source in sources}

    def _queue(self, pipe: Pipeline, source: str, *args: Arg, keys: tuple[str, ...] = ()) -> None:
        every = self._shared + keys
        pipe.evalsha(self._scripts[source].sha, len(every), *every, *args)

    def heartbeat_command(self, lines: Sequence[bytes]) -> list[Arg]:
        """The whole ``EVALSHA`` of a HEARTBEAT call: what ``heartbeats`` sends,
        for a load generator to send the same."""
        k = self._keys
        return [
            "EVALSHA",
            self._scripts[HEARTBEAT].sha,
            len(self._shared),
            *self._shared,
            self._ttl_ms,
            self._maxlen,
            k.online_prefix,
            k.holders_prefix,
            CONSUMER_GROUP,
            b"\n".join(lines),
            self._room_maxlen,
            k.room_prefix,
        ]

    def heartbeats(self, pipe: Pipeline, lines: Sequence[bytes]) -> None:
        """Apply heartbeats, each a line ``b"<client> <server> <sent>[ <room>[ <data>]]"``.

        ``sent`` is when it was sent: its heartbeat stream entry id, which the
        call then acknowledges unless Redis failed the heartbeat, or Unix ms
        (0 for now). The result is one code per heartbeat (``CAME_ONLINE``,
        ``REFRESHED``, ``STALE``, ``FAILED``), then the error of the last
        failure, if any.
        """
        pipe.execute_command(*self.heartbeat_command(lines))

    def publish(self, pipe: Pipeline, server: str, lines: str, cap: int) -> None:
        """Add a heartbeat of ``server`` to the heartbeat stream for each of
        ``lines``, one a line: ``"<client>[ <room>[ <data>]]"``."""
        self._queue(pipe, PUBLISH, cap, server, lines, self._ttl_ms, CONSUMER_GROUP)

    def leave(self, pipe: Pipeline, client: str, server: str) -> None:
        """This server stops holding ``client``: ``LEFT`` or ``KEPT``."""
        args = (client, server, self._ttl_ms, self._maxlen, CONSUMER_GROUP)
        keys = (self._keys.online(client), self._keys.holders(client))
        self._queue(pipe, LEAVE, *args, keys=keys)

    def leave_room(self, pipe: Pipeline, room: str, client: str, server: str) -> None:
        """This server stops holding ``client`` in ``room``: ``LEFT`` or ``KEPT``."""
        args = (room, client, server, self._ttl_ms, self._room_maxlen, CONSUMER_GROUP)
        self._queue(pipe, ROOM_LEAVE, *args, keys=(self._keys.room(room).base,))

    def offline(self, pipe: Pipeline, clients: Sequence[str]) -> None:
        """OFFLINE checks of ``clients``: ``[published, failed, last failure or ""]``."""
        self._queue(pipe, OFFLINE, self._maxlen, self._keys.online_prefix, *clients)

    def claim(
        self, pipe: Pipeline, consumer: str, idle_ms: int, count: int, found: Sequence[bytes]
    ) -> None:
        """Claim the entries ``found`` last time if still pending; find the next."""
        self._queue(pipe, CLAIM, CONSUMER_GROUP, consumer, idle_ms, count, *found)

    def forget(self, pipe: Pipeline, consumer: str, idle_ms: int) -> None:
        """Remove consumers idle for ``idle_ms`` with nothing pending, but ``consumer``."""
        self._queue(pipe, FORGET, CONSUMER_GROUP, consumer, idle_ms)

    async def execute(self, fill: Callable[[Pipeline], None]) -> list[Any]:
        """Run the calls ``fill`` queues, in one round trip (on a cluster, one
        per call, all at once).

        A call's error is its result, so one bad key cannot fail a batch.
        """
        results: list[Any] = []
        for _ in range(2):
            pipe = Calls(r) if is_cluster(r := self._redis) else r.pipeline(transaction=False)
            fill(cast(Pipeline, pipe))
            results = await pipe.execute(raise_on_error=False)
            if not any(isinstance(r, NoScriptError) for r in results):
                return results
            await self.load()
        return results

    async def run(self, fill: Callable[[Pipeline], None]) -> Any:
        """Run the one call ``fill`` queues; its error is raised."""
        (result,) = await self.execute(fill)
        if isinstance(result, Exception):
            raise result
        return result

    async def load(self) -> None:
        """Load every script into Redis's script cache."""
        for script in self._scripts.values():
            await self._redis.script_load(script.script)

    async def due(self, limit: int) -> tuple[int, list[tuple[str, int]]]:
        """Redis's time (ms) and up to ``limit`` clients whose deadline has passed,
        with it, earliest first."""

        def fill(pipe: Pipeline) -> None:
            self._queue(pipe, DUE, limit, CONSUMER_GROUP)

        now, flat = await self.run(fill)
        due = [(text(flat[i]), int(float(flat[i + 1]))) for i in range(0, len(flat), 2)]
        return int(now), due

    async def sweep_rooms(self, limit: int, members: int = 1000) -> tuple[int, int, int, str]:
        """OFFLINE for up to ``members`` overdue members of up to ``limit`` rooms
        due: published, rooms visited, rooms Redis failed, the last failure."""
        args = (self._room_maxlen, self._keys.room_prefix, limit, CONSUMER_GROUP, members)
        published, visited, failed, failure = await self.run(
            lambda pipe: self._queue(pipe, ROOM_SWEEP, *args)
        )
        return int(published), int(visited), int(failed), text(failure)

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the presence stream position they are exact at."""
        position, flat = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT))
        clients = [OnlineClient(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]
        return text(position), clients

    async def watched(self, clients: Sequence[str]) -> tuple[str, list[OnlineClient]]:
        """Which of ``clients`` are online, and the presence stream position
        that is exact at."""
        if not clients:
            position, _ = await self.snapshot()
            return position, []
        position, servers = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT, *clients))
        online = [
            OnlineClient(c, text(s)) for c, s in zip(clients, servers, strict=True) if s is not None
        ]
        return text(position), online

    def room_snapshot(self, pipe: Pipeline, room: str) -> None:
        """``[position, [client, server, ...], [client, data, ...]]`` of ``room``."""
        self._queue(pipe, ROOM_SNAPSHOT, keys=(self._keys.room(room).base,))

    async def set_data(self, room: str, client: str, data: str) -> int:
        """Replace ``client``'s data in ``room``: 1 published UPDATE, 0 unchanged,
        -1 not a member."""
        args = (room, client, data, self._room_maxlen)
        keys = (self._keys.room(room).base,)
        return int(await self.run(lambda pipe: self._queue(pipe, SET_DATA, *args, keys=keys)))
