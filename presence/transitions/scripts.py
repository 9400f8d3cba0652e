"""``Transitions``: the one way the Lua scripts (``sources``) are called.

It names every key a script touches, from ``settings.keys``, and passes it in
KEYS: the scripts build no key name, as Redis Cluster and proxies require. A
heartbeat call's keys are built per line from the line itself, which is
parsed here exactly as the script parses it (``_LINE``, ``_ROOM``).
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from typing import Any, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from .. import last_seen
from ..contract import CONSUMER_GROUP, ID_PATTERN, Keys
from ..entries import text
from ..events import Member, OnlineClient
from ..redis_client import Redis
from ..redis_cluster import Calls, is_cluster
from ..settings import Settings
from .ends import (
    DUE,
    LEAVE,
    OFFLINE,
    ROOM_LEAVE,
    ROOM_SWEEP,
    ROOMS_DUE,
)
from .lua import CAME_ONLINE, FAILED, KEPT, LEFT, REFRESHED, STALE
from .sources import (
    CLAIM,
    FORGET,
    HEARTBEAT,
    PUBLISH,
    ROOM_SNAPSHOT,
    SET_DATA,
    SNAPSHOT,
)

__all__ = ["CAME_ONLINE", "FAILED", "KEPT", "LEFT", "REFRESHED", "STALE", "Transitions"]

Arg = str | bytes | int | float

# HEARTBEAT's patterns for a line and for what follows its third field, as
# Python's: bytes' \S and \d are Lua's %S and %d.
_LINE = re.compile(rb"(\S+) \S+ \d+-?\d*(.*)", re.DOTALL)
_ROOM = re.compile(rb" (\S+) ?\??.*", re.DOTALL)
# Lines as the consumer sends them, ids of valid characters only, all matched
# at once: each then splits at its spaces exactly as the patterns above would.
_ID_LINE = rb"%s %s \d+(?:-\d+)?(?: %s(?: [^\n]*)?)?" % ((ID_PATTERN,) * 3)
_ID_LINES = re.compile(rb"%s(?:\n%s)*" % (_ID_LINE, _ID_LINE))
#: Where a room's id goes in its key names: no valid room id has a newline.
_ROOM_ID = "\n"
#: Round trips of ROOM_SWEEP calls in one room sweep, at most: the first visits
#: every room due, the next give what rooms with few due left to those with more.
SWEEP_ROUNDS = 3


class SweptTooLate(Exception):
    """What is due was read too late to act on it: wait for heartbeats."""


class Transitions:
    """The one way scripts are called: the only writer of online keys, the
    deadline index and the presence stream.

    Each method queues one script call on a pipeline; ``execute`` sends
    them in one round trip and ``run`` sends one. Scripts go by SHA alone:
    when Redis has lost them (a restart), they are loaded and the batch is
    sent again; every script is safe to rerun.
    """

    def __init__(self, redis: Redis, settings: Settings, *, rooms_alone: bool = False) -> None:
        """``rooms_alone``: a heartbeat with a room counts for the room only
        (sharded, the room's shard is seldom its client's)."""
        self._redis = redis
        self._rooms_alone = rooms_alone
        k = settings.keys
        self._keys = k
        self._shared = (k.deadlines, k.servers, k.presence, k.heartbeat, k.rooms_due)
        self._ttl_ms = settings.ttl_ms
        self._maxlen = settings.presence_maxlen
        self._room_maxlen = settings.room_maxlen
        self._retention_ms = settings.last_seen_ms
        # The heartbeat keys' names, as bytes, around the id that completes them.
        self._online = k.online("").encode()
        self._holders = k.holders("").encode()
        r = k.room(_ROOM_ID)
        self._room_parts = [
            tuple(name.encode().split(_ROOM_ID.encode()))
            for name in (r.deadlines, r.members, r.data, r.presence, r.holders(""))
        ]
        sources = [HEARTBEAT, OFFLINE, LEAVE, ROOM_LEAVE, DUE, ROOMS_DUE, ROOM_SWEEP]
        sources += [SNAPSHOT, ROOM_SNAPSHOT, SET_DATA, CLAIM, FORGET, PUBLISH]
        self._scripts = {source: redis.register_script(source) for source in sources}

    @property
    def keys(self) -> Keys:
        return self._keys

    def _queue(self, pipe: Pipeline, source: str, *args: Arg, keys: tuple[str, ...] = ()) -> None:
        every = self._shared + keys
        pipe.evalsha(self._scripts[source].sha, len(every), *every, *args)

    def register(self, source: str) -> None:
        """Another stage's script, called with ``call``: loaded with these, so
        ``execute`` runs it again after Redis lost its scripts."""
        if source not in self._scripts:
            self._scripts[source] = self._redis.register_script(source)

    def call(self, pipe: Pipeline, source: str, *args: Arg, keys: tuple[str, ...] = ()) -> None:
        """Queue a registered script: the shared keys, then ``keys``, then ``args``."""
        self._queue(pipe, source, *args, keys=keys)

    def _room_keys(self, room: str) -> tuple[str, str, str, str]:
        """A room's keys in the scripts' order (``lua.room_scope``)."""
        r = self._keys.room(room)
        return r.deadlines, r.members, r.data, r.presence

    def heartbeat_command(self, lines: Sequence[bytes]) -> list[Arg]:
        """The whole ``EVALSHA`` of a HEARTBEAT call: what ``heartbeats`` sends,
        for a load generator to send the same."""
        joined = b"\n".join(lines)
        keys, sizes = self._heartbeat_keys(joined)
        return [
            "EVALSHA",
            self._scripts[HEARTBEAT].sha,
            len(self._shared) + len(keys),
            *self._shared,
            *keys,
            self._ttl_ms,
            self._maxlen,
            CONSUMER_GROUP,
            joined,
            self._room_maxlen,
            sizes,
        ]

    def _heartbeat_keys(self, joined: bytes) -> tuple[list[bytes], bytes]:
        """The keys of each line the script finds in ``joined`` (Lua's
        ``[^\\n]+``), and how many each has: HEARTBEAT's layout."""
        lines: list[tuple[bytes | None, bytes | None]]
        if _ID_LINES.fullmatch(joined):
            split = [line.split(b" ", 4) for line in joined.split(b"\n")]
            lines = [(f[0], f[3] if len(f) > 3 else None) for f in split]
        else:
            lines = [_client_and_room(line) for line in joined.split(b"\n") if line]
        keys: list[bytes] = []
        sizes = bytearray()
        owner = None  # the client whose global keys were declared last
        for client, room in lines:
            if client is None:
                sizes.append(0x30)  # malformed: the script fails it
                continue
            if room is not None and self._rooms_alone:
                keys += self._membership_keys(room, client)
                sizes.append(0x39)
                continue
            size = 0
            if client != owner:
                keys += (self._online + client, self._holders + client)
                owner, size = client, 2
            if room is not None:
                keys += self._membership_keys(room, client)
                size += 5
            sizes.append(0x30 + size)
        return keys, bytes(sizes)

    def _membership_keys(self, room: bytes, client: bytes) -> tuple[bytes, ...]:
        """A membership's five keys, in room_scope's order."""
        (d0, d1), (m0, m1), (a0, a1), (p0, p1), (h0, h1) = self._room_parts
        return (
            d0 + room + d1,
            m0 + room + m1,
            a0 + room + a1,
            p0 + room + p1,
            h0 + room + h1 + client,
        )

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
        args = (client, server, self._ttl_ms, self._maxlen, CONSUMER_GROUP, self._retention_ms)
        keys = (self._keys.online(client), self._keys.holders(client), self._keys.last_seen)
        self._queue(pipe, LEAVE, *args, keys=keys)

    def leave_room(self, pipe: Pipeline, room: str, client: str, server: str) -> None:
        """This server stops holding ``client`` in ``room``: ``LEFT`` or ``KEPT``."""
        args = (room, client, server, self._ttl_ms, self._room_maxlen, CONSUMER_GROUP)
        r = self._keys.room(room)
        keys = (*self._room_keys(room), r.holders(client), r.last_seen)
        self._queue(pipe, ROOM_LEAVE, *args, self._retention_ms, keys=keys)

    def offline(self, pipe: Pipeline, clients: Sequence[str], *, deleted: bool = False) -> None:
        """OFFLINE checks of ``clients``: ``[published, failed, last failure or ""]``.
        With ``deleted``, only for keys gone before their deadline."""
        keys = (self._keys.last_seen, *(self._keys.online(c) for c in clients))
        args: tuple[str | int, ...] = (self._maxlen, self._retention_ms, int(deleted), *clients)
        self._queue(pipe, OFFLINE, *args, keys=keys)

    def claim(
        self, pipe: Pipeline, consumer: str, idle_ms: int, count: int, found: Sequence[bytes]
    ) -> None:
        """Claim the entries ``found`` last time if still pending; find the next."""
        self._queue(pipe, CLAIM, CONSUMER_GROUP, consumer, idle_ms, count, *found)

    def forget(
        self,
        pipe: Pipeline,
        consumer: str,
        idle_ms: int,
        *,
        group: str = CONSUMER_GROUP,
        stream: str | None = None,
    ) -> None:
        """Remove consumers idle for ``idle_ms`` with nothing pending, but
        ``consumer``, from ``group`` of ``stream`` (the heartbeat stream's)."""
        keys = () if stream is None else (stream,)
        self._queue(pipe, FORGET, group, consumer, idle_ms, keys=keys)

    async def execute(
        self, fill: Callable[[Pipeline], None], *, partial: bool = False
    ) -> list[Any]:
        """Run the calls ``fill`` queues, in one round trip (on a cluster, one
        per call, all at once).

        A call's error is its result, so one bad key cannot fail a batch. A
        lost connection is raised, unless ``partial`` (on a cluster, the calls
        to the other nodes went through: each call's error is its result).
        """
        results: list[Any] = []
        for _ in range(2):
            if is_cluster(r := self._redis):
                pipe: Any = Calls(r, partial=partial)
            else:
                pipe = r.pipeline(transaction=False)
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

    async def sweep_rooms(
        self, limit: int, members: int = 1000, *, patience: float = math.inf
    ) -> tuple[int, int, int, str]:
        """OFFLINE for up to ``members`` overdue members of up to ``limit`` rooms
        due: published, rooms visited, rooms Redis failed, the last failure.

        One call reads the rooms due, then one call per room sweeps it, all
        in one round trip, ``members`` shared out among them; what rooms with
        fewer due leave goes to those with more, in up to ``SWEEP_ROUNDS``
        round trips in all. A room with more due than it got stays due. Each
        room's call is decided from its state, so servers sweeping the same
        rooms at once publish each OFFLINE once. ``SweptTooLate`` when the
        rooms due took more than ``patience`` seconds to read (see ``Sweeper``).
        """
        asked = time.monotonic()
        horizon, due = await self.run(
            lambda pipe: self._queue(pipe, ROOMS_DUE, limit, CONSUMER_GROUP)
        )
        if due and time.monotonic() - asked > patience:
            raise SweptTooLate
        rooms = [text(room) for room in due]
        published, failed, failure = 0, 0, ""
        visiting, left = rooms, members
        for _ in range(SWEEP_ROUNDS):
            if not visiting:
                break
            shares = [
                left // len(visiting) + (i < left % len(visiting)) for i in range(len(visiting))
            ]

            def fill(
                pipe: Pipeline, visiting: list[str] = visiting, shares: list[int] = shares
            ) -> None:
                for room, share in zip(visiting, shares, strict=True):
                    args = (room, self._room_maxlen, horizon, share, self._retention_ms)
                    keys = (*self._room_keys(room), self._keys.room(room).last_seen)
                    self._queue(pipe, ROOM_SWEEP, *args, keys=keys)

            more = []
            for room, reply in zip(visiting, await self.execute(fill), strict=True):
                if isinstance(reply, Exception):
                    raise reply  # a shared key: every room's call failed alike
                taken, still_due, error = int(reply[0]), int(reply[1]), text(reply[2])
                published, left = published + taken, left - taken
                if error:
                    failed, failure = failed + 1, error
                elif still_due:
                    more.append(room)
            visiting = more if left > 0 else []
        return published, len(rooms), failed, failure

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the presence stream position they are exact at."""
        position, flat = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT))
        clients = [OnlineClient(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]
        return text(position), clients

    async def watched(
        self, clients: Sequence[str], *, position_only: bool = False
    ) -> tuple[str, list[OnlineClient]]:
        """Which of ``clients`` are online, and the presence stream position
        that is exact at; with ``position_only``, that position alone."""
        if position_only:
            # No valid id is empty: the script reads the position and no client.
            position, _ = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT, ""))
            return text(position), []
        if not clients:
            position, _ = await self.snapshot()
            return position, []
        position, servers = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT, *clients))
        online = [
            OnlineClient(c, text(s)) for c, s in zip(clients, servers, strict=True) if s is not None
        ]
        return text(position), online

    async def last_seen(self, client: str, room: str | None = None) -> int | None:
        """Unix ms of ``client``'s last OFFLINE (in ``room``, if given) within
        the retention, else None."""
        key = self._keys.last_seen if room is None else self._keys.room(room).last_seen
        return await last_seen.read(self._redis, key, client, self._retention_ms)

    async def member(self, room: str, client: str) -> Member | None:
        """``client`` in ``room`` if it is an announced member, else None."""
        r = self._keys.room(room)
        # One transaction (one slot): the data is the member's, not a later one's.
        async with self._redis.pipeline(transaction=True) as pipe:
            pipe.hget(r.members, client)
            pipe.hget(r.data, client)
            server, data = await pipe.execute()
        if server is None:
            return None
        return Member(client, text(server), None if data is None else text(data))

    async def online(self) -> list[OnlineClient]:
        """Every announced-online client (unsorted)."""
        flat = await self._redis.hgetall(self._keys.servers)
        return [OnlineClient(text(c), text(s)) for c, s in flat.items()]

    async def server_of(self, client: str) -> str | None:
        """The server of an announced-online client, else None."""
        server = await self._redis.hget(self._keys.servers, client)
        return None if server is None else text(server)

    def room_snapshot(self, pipe: Pipeline, room: str) -> None:
        """``[position, [client, server, ...], [client, data, ...]]`` of ``room``."""
        self._queue(pipe, ROOM_SNAPSHOT, keys=self._room_keys(room))

    async def set_data(self, room: str, client: str, data: str) -> int:
        """Replace ``client``'s data in ``room``: 1 published UPDATE, 0 unchanged,
        -1 not a member."""
        args = (room, client, data, self._room_maxlen)
        keys = self._room_keys(room)
        return int(await self.run(lambda pipe: self._queue(pipe, SET_DATA, *args, keys=keys)))


def _client_and_room(line: bytes) -> tuple[bytes | None, bytes | None]:
    """A heartbeat line's client and room (None: none) as HEARTBEAT reads
    them; no client for a line it finds malformed."""
    found = _LINE.fullmatch(line)
    if found is None:
        return None, None
    if not (rest := found[2]):
        return found[1], None
    in_room = _ROOM.fullmatch(rest)
    return (found[1], in_room[1]) if in_room is not None else (None, None)
