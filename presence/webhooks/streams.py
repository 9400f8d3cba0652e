"""The consumer-group side of webhooks: which entries this server posts next.

Every server with a webhook reads the group ``webhooks`` on the ``presence``
stream and on each room stream in the index (``#<room>`` members of
``rooms.due``, which the room scripts add while the marker ``#`` is there,
see ``transitions.lua``). What it
does differently from a plain ``XREADGROUP``: a stream has one batch in
flight across all servers. ``TAKE`` gives a stream's new entries only when
none is pending; a batch pending with another server is left to it while it
keeps it fresh (``touch``), and taken over, whole and in order, once it has
been idle for ``CLAIM_AFTER``. So each client's transitions go out in stream
order even when a server dies mid-delivery.

A room leaves the index in the same script that found its stream delivered,
atomically with the room scripts that add it: an entry added meanwhile puts
it back. An empty room's stream, which expires an hour after its last
member left, is kept an hour after the last look that found it behind, so
a receiver down for longer loses none of it while any server looks.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final, cast

from redis.asyncio.client import Pipeline
from redis.exceptions import ResponseError

from ..contract import EMPTY_ROOM_TTL, WEBHOOKS_GROUP, WEBHOOKS_MARKER
from ..entries import text
from ..settings import Settings
from ..transitions.scripts import Transitions
from .payload import Source

#: Seconds a batch pending with another server may go untouched before this
#: one takes it over (its server stopped); servers touch theirs every second.
CLAIM_AFTER: Final = 5.0
TOUCH_EVERY: Final = 1.0

# What TAKE found in a stream.
TAKEN: Final = 1
NOTHING: Final = 0
BUSY: Final = 2
GONE: Final = 3

# The shared keys (``transitions.lua``), of which KEYS[5] rooms.due (the index)
# KEYS[6] the stream
# ARGV[1] group  ARGV[2] this server  ARGV[3] entries at most
# ARGV[4] claim after (ms)  ARGV[5] the room ('' for the presence stream)
# ARGV[6] ms an empty room's stream is kept
# Returns {state, dropped, entries, oldest}: dropped counts the entries
# trimmed from the stream (its MAXLEN) before they were posted, which are
# acknowledged; oldest is the id of the oldest entry not acknowledged yet,
# as far as this call saw ('' for none: caught up).
TAKE: Final = """
local stream, index = KEYS[6], KEYS[5]
local group, me, room = ARGV[1], ARGV[2], ARGV[5]
local count, claim = tonumber(ARGV[3]), tonumber(ARGV[4])
local TAKEN, NOTHING, BUSY, GONE = 1, 0, 2, 3
local function unindex()
  if room ~= '' then redis.call('ZREM', index, '#' .. room) end
end
local function after(a, b)
  local am, as = string.match(a, '^(%d+)%-(%d+)$')
  local bm, bs = string.match(b, '^(%d+)%-(%d+)$')
  am, bm = tonumber(am), tonumber(bm)
  return am > bm or (am == bm and tonumber(as) > tonumber(bs))
end
local function first_id(entries)
  if #entries > 0 then return entries[1][1] end
  return ''
end
-- A read's entries: {{stream, entries}} from Redis, {stream, entries} from
-- fakeredis (memory://); nothing new is nil.
local function read_entries(...)
  local read = redis.call('XREADGROUP', 'GROUP', group, me, 'COUNT', count, 'STREAMS', stream, ...)
  if not read or #read == 0 then return {} end
  if type(read[1]) == 'table' then return read[1][2] end
  return read[2] or {}
end
if redis.call('EXISTS', stream) == 0 then
  unindex()
  return {GONE, 0, {}, ''}
end
-- Behind: an empty room's stream (it expires) is kept while entries wait.
local function keep()
  if room ~= '' and redis.call('PTTL', stream) > 0 then
    redis.call('PEXPIRE', stream, ARGV[6])
  end
end
local ok, pending = pcall(redis.call, 'XPENDING', stream, group)
if not ok then
  if room == '' then return {GONE, 0, {}, ''} end
  -- A room stream indexed without the group: every entry is still to post.
  redis.call('XGROUP', 'CREATE', stream, group, '0')
  pending = {0}
end
if pending[1] > 0 then
  local oldest = redis.call('XPENDING', stream, group, '-', '+', 1)[1]
  if oldest[2] ~= me then
    if oldest[3] < claim then
      keep()
      return {BUSY, 0, {}, oldest[1]}
    end
    -- Its server stopped: its whole batch is this server's now, in order.
    local ids = {}
    for _, p in ipairs(redis.call('XPENDING', stream, group, '-', '+', count)) do
      ids[#ids + 1] = p[1]
    end
    redis.call('XCLAIM', stream, group, me, 0, unpack(ids))
  end
  local kept, gone = {}, {}
  for _, e in ipairs(read_entries('0')) do
    if e[2] then kept[#kept + 1] = e else gone[#gone + 1] = e[1] end
  end
  if #gone > 0 then redis.call('XACK', stream, group, unpack(gone)) end
  keep()
  return {TAKEN, #gone, kept, first_id(kept)}
end
-- Entries trimmed before any server read them: the group's lag (Redis 7)
-- counts them with those still in the stream, all unread once the first is.
local dropped = 0
for _, g in ipairs(redis.call('XINFO', 'GROUPS', stream)) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  if f['name'] == group and f['lag'] then
    local first = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)
    if #first > 0 and after(first[1][1], f['last-delivered-id']) then
      dropped = math.max(0, f['lag'] - redis.call('XLEN', stream))
    end
  end
end
local new = read_entries('>')
if #new == 0 then
  unindex()
  return {NOTHING, dropped, {}, ''}
end
keep()
return {TAKEN, dropped, new, first_id(new)}
"""

Entry = tuple[bytes, list[bytes]]


@dataclass(slots=True)
class Taken:
    """What one ``take`` found in one stream."""

    source: Source
    state: int
    dropped: int = 0
    entries: list[Entry] = field(default_factory=list)
    #: The stream's oldest entry not acknowledged yet, as TAKE saw it; empty
    #: when it found none (caught up, or gone).
    oldest: str = ""


class WebhookStreams:
    """One shard's transition streams, as the webhook group reads them.

    Every call goes through the shard's ``Transitions``, which runs TAKE
    with the other scripts (loaded again after a Redis restart)."""

    def __init__(
        self, transitions: Transitions, settings: Settings, *, rooms: bool, presence: bool
    ) -> None:
        self._transitions = transitions
        self._keys = settings.keys
        self._me = settings.server_id
        self.forget_after = settings.forget_after
        transitions.register(TAKE)
        self.rooms = rooms
        self.presence = presence
        self.global_source = Source(self._keys.presence)

    async def prepare(self) -> None:
        """The group on the presence stream (from now on, unless it exists) and
        the marker that has the room scripts index rooms, in one round trip."""
        keys = self._keys

        def fill(pipe: Pipeline) -> None:
            if self.presence:
                pipe.execute_command(
                    "XGROUP", "CREATE", keys.presence, WEBHOOKS_GROUP, "$", "MKSTREAM"
                )
            if self.rooms:
                pipe.execute_command("ZADD", keys.rooms_due, "NX", "+inf", WEBHOOKS_MARKER)

        for reply in await self._transitions.execute(fill):
            if isinstance(reply, ResponseError) and "BUSYGROUP" in str(reply):
                continue
            if isinstance(reply, Exception):
                raise reply

    async def indexed(self, start: int, limit: int) -> tuple[list[Source], int]:
        """The rooms among ``limit`` members of the index from ``start`` on, as
        sources, and how many members that read. The marker is put back first
        if it went (a Redis that lost its data)."""
        due = self._keys.rooms_due

        def fill(pipe: Pipeline) -> None:
            pipe.execute_command("ZADD", due, "NX", "+inf", WEBHOOKS_MARKER)
            pipe.execute_command("ZRANGEBYSCORE", due, "+inf", "+inf", "LIMIT", start, limit)

        replies = await self._transitions.execute(fill)
        for reply in replies:
            if isinstance(reply, Exception):
                raise reply
        rooms = [m[1:] for raw in replies[1] if (m := text(raw)) != WEBHOOKS_MARKER]
        return [Source(self._keys.room(r).presence, r) for r in rooms], len(replies[1])

    async def take(self, sources: Sequence[Source], count: int) -> list[Taken]:
        """Each source's batch: new entries, or one taken over; in one round trip."""
        if not sources:
            return []
        claim_ms = int(CLAIM_AFTER * 1000)

        def fill(pipe: Pipeline) -> None:
            for s in sources:
                self._transitions.call(
                    pipe, TAKE, WEBHOOKS_GROUP, self._me, count, claim_ms, s.room,
                    EMPTY_ROOM_TTL * 1000, keys=(s.stream,),
                )  # fmt: skip

        out: list[Taken] = []
        for source, result in zip(sources, await self._transitions.execute(fill), strict=True):
            if isinstance(result, Exception):
                raise result
            state, dropped, entries, oldest = cast(list[Any], result)
            out.append(Taken(source, int(state), int(dropped), list(entries), text(oldest)))
        return out

    async def touch(self, batch: dict[Source, list[bytes]]) -> None:
        """Keep this server's batch fresh: another server takes over only
        what has been idle for ``CLAIM_AFTER``."""
        group, me = WEBHOOKS_GROUP, self._me

        def fill(pipe: Pipeline) -> None:
            for s, ids in batch.items():
                pipe.execute_command("XCLAIM", s.stream, group, me, 0, *ids, "JUSTID")

        await self._transitions.execute(fill)

    async def ack(self, batch: dict[Source, list[bytes]]) -> None:
        """The batch was posted (or given up): done, for every server."""

        def fill(pipe: Pipeline) -> None:
            for s, ids in batch.items():
                pipe.xack(s.stream, WEBHOOKS_GROUP, *ids)

        for result in await self._transitions.execute(fill):
            if isinstance(result, Exception):
                raise result

    async def forget(self, sources: Sequence[Source]) -> list[str]:
        """Remove the consumers of ``sources``' groups idle for ``forget_after``
        with nothing pending (servers gone for good), as the heartbeat group's
        are; returns their names, once each."""
        idle_ms = round(self.forget_after * 1000)

        def fill(pipe: Pipeline) -> None:
            for s in sources:
                self._transitions.forget(
                    pipe, self._me, idle_ms, group=WEBHOOKS_GROUP, stream=s.stream
                )

        removed: dict[str, None] = {}
        for reply in await self._transitions.execute(fill):
            if isinstance(reply, Exception):
                raise reply
            removed.update((text(name), None) for name in reply[::2])
        return list(removed)


async def marked(transitions: Sequence[Transitions]) -> list[str]:
    """The ``rooms.due`` keys, one a shard, that hold the webhook marker."""
    found: list[str] = []
    for t in transitions:
        due = t.keys.rooms_due

        def fill(pipe: Pipeline, due: str = due) -> None:
            pipe.execute_command("ZSCORE", due, WEBHOOKS_MARKER)

        if await t.run(fill) is not None:
            found.append(due)
    return found
