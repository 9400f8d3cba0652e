"""The Lua scripts: every transition happens inside one of them, atomically.

The deadline index (``online.deadlines``, client -> Unix ms) and the server
hash (``online.servers``) hold the *announced* state: a client is in them from
the moment its ``ONLINE`` is in the presence stream until its ``OFFLINE`` is.
Every script that publishes decides from that state, never from an event,
which is what makes a late keyspace event, a sweeper and several servers
racing for the same client publish each transition once.

Each script reads everything it decides from before its first write, and
checks the types of the keys it writes: Redis has no rollback, so a script
that fails, fails before it changed anything.

Every script takes the same four keys, in the same order, and uses those it
needs; a script about one client adds that client's keys after them:

    KEYS[1] online.deadlines   KEYS[2] online.servers
    KEYS[3] presence stream    KEYS[4] heartbeat stream
    KEYS[5] online.clients.<id>  KEYS[6] online.holders.<id>

Times come from Redis ``TIME`` so that every server uses one clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Final

from redis.asyncio.client import Pipeline
from redis.exceptions import NoScriptError

from ..contract import CONSUMER_GROUP
from ..events import OnlineClient
from ..redis_client import Redis
from ..settings import Settings
from ..wire import text

Arg = str | bytes | int | float

# Result codes, one per heartbeat (HEARTBEAT) or per leave (LEAVE).
CAME_ONLINE: Final = 1
REFRESHED: Final = 0
#: Nothing changed: sent before its server announced the client left it, or
#: older than the TTL (then it may still move the deadline of a client that
#: is announced, see HEARTBEAT).
STALE: Final = -1
#: Redis failed it, or the line was malformed: nothing was written.
FAILED: Final = -2
#: LEAVE published the client's OFFLINE.
LEFT: Final = 1
#: LEAVE found another server holding the client, or it was not online.
KEPT: Final = 0

# The same names on the Lua side.
_CODES = (
    f"local CAME_ONLINE, REFRESHED, STALE, FAILED = {CAME_ONLINE}, {REFRESHED}, {STALE}, {FAILED}\n"
    f"local LEFT, KEPT = {LEFT}, {KEPT}\n"
)

_PRELUDE = (
    _CODES
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local function expect(key, kind)
  local found = redis.call('TYPE', key)['ok']
  if found ~= 'none' and found ~= kind then
    error('WRONGTYPE ' .. key .. ' holds a ' .. found .. ', not a ' .. kind)
  end
end

local function ms_of(id)
  return tonumber(string.match(id, '^(%d+)'))
end

-- Unix ms up to which every heartbeat sent has been applied: the oldest
-- heartbeat entry the group has not applied yet (pending, or not read), else
-- now. A deadline after it may still move: a heartbeat sent before it is on
-- its way, however far behind the consumers are.
local function applied_until(group)
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[4])
  if not ok then return now end
  local last
  for _, g in ipairs(groups) do
    local fields = {}
    for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
    if fields['name'] == group then last = fields['last-delivered-id'] end
  end
  if not last then return now end
  local horizon = now
  local pending = redis.call('XPENDING', KEYS[4], group)
  if pending[1] > 0 then horizon = math.min(horizon, ms_of(pending[2])) end
  local unread = redis.call('XRANGE', KEYS[4], '(' .. last, '+', 'COUNT', 1)
  if #unread > 0 then horizon = math.min(horizon, ms_of(unread[1][1])) end
  return horizon
end

local function publish(client, status, server, cap)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', 'client', client,
    'status', status, 'server', server)
end

-- The only way a client stops being announced.
local function publish_offline(client, server, cap)
  redis.call('ZREM', KEYS[1], client)
  redis.call('HDEL', KEYS[2], client)
  publish(client, 'OFFLINE', server, cap)
end

-- The types of the shared keys: checked before any write.
local function expect_shared()
  expect(KEYS[1], 'zset')
  expect(KEYS[2], 'hash')
  expect(KEYS[3], 'stream')
end
"""
)

# Any number of heartbeats in one call, all in one argument: one round of
# script overhead, and next to nothing to encode, for a whole batch read from
# the stream. The per-client keys are built here from their prefixes (this is
# a standalone-Redis script: its keys live in different slots anyway).
# ARGV[1] ttl ms
# ARGV[2] presence stream cap
# ARGV[3] online.clients. prefix
# ARGV[4] online.holders. prefix
# ARGV[5] the consumer group
# ARGV[6] one line per heartbeat: "<client> <server> <sent>"; sent is its
#         heartbeat entry id, which is acknowledged in the same call unless
#         Redis failed the heartbeat, or Unix ms (0 = now)
# Returns one code per heartbeat (CAME_ONLINE, REFRESHED, STALE, FAILED);
# after a failure, the last element is its error.
HEARTBEAT: Final = (
    _PRELUDE
    + """
local ttl, cap, group = tonumber(ARGV[1]), ARGV[2], ARGV[5]
-- Whether this server announced it left the client after the heartbeat
-- stream position ms-seq: then a heartbeat added at that position or before
-- no longer counts. A leave is stored as minus its position's ms under the
-- server, and minus its sequence number under '#' .. server ('#' is in no id).
local function left_after(holders, server, ms, seq)
  local held = tonumber(redis.call('ZSCORE', holders, server) or '0')
  if held >= 0 or ms > -held then return false end
  if ms < -held then return true end
  return seq <= -tonumber(redis.call('ZSCORE', holders, '#' .. server) or '0')
end
local function apply(client, server, ms, seq)
  local online, holders = ARGV[3] .. client, ARGV[4] .. client
  if ms == 0 then ms, seq = now, math.huge end  -- sent now: after any leave
  local deadline = math.min(ms, now) + ttl
  local announced = redis.call('ZSCORE', KEYS[1], client)
  if deadline <= now then
    -- Older than the TTL: it never fails (it would hold the sweeper back, see
    -- applied_until), and never brings a client back. Applied late (the
    -- consumers are behind) for a client still announced, it proves the
    -- client was online when it was sent: its deadline moves up to there.
    if announced then
      local ok, left = pcall(left_after, holders, server, ms, seq)
      if ok and not left then redis.call('ZADD', KEYS[1], 'GT', deadline, client) end
    end
    return STALE
  end
  -- Reads first: a key of the wrong type fails here, before any write.
  if left_after(holders, server, ms, seq) then return STALE end
  local old = redis.call('GET', online)
  redis.call('ZADD', holders, 'GT', deadline, server)
  -- Every entry's deadline, and any leave worth remembering, ends within a
  -- TTL of now: one PEXPIRE covers them all.
  redis.call('PEXPIRE', holders, ttl)
  if announced and tonumber(announced) > deadline and old then
    return REFRESHED  -- a newer heartbeat was applied first: never move a deadline back
  end
  redis.call('SET', online, server, 'PX', deadline - now)
  redis.call('ZADD', KEYS[1], deadline, client)
  if announced then
    -- Still announced, so a refresh: also when the key expired before its
    -- OFFLINE went out (Redis was unreachable, or the consumers are behind).
    if old ~= server then redis.call('HSET', KEYS[2], client, server) end
    return REFRESHED
  end
  redis.call('HSET', KEYS[2], client, server)
  publish(client, 'ONLINE', server, cap)
  return CAME_ONLINE
end
expect_shared()
local results, acks, failure = {}, {}, nil
for line in string.gmatch(ARGV[6], '[^\\n]+') do
  local client, server, sent, ms, seq = string.match(line, '^(%S+) (%S+) ((%d+)%-?(%d*))$')
  local ok, result = false, 'malformed heartbeat ' .. line
  if client then
    ok, result = pcall(apply, client, server, tonumber(ms), tonumber(seq) or 0)
    if ok and seq ~= '' then acks[#acks + 1] = sent end
  end
  if ok then
    results[#results + 1] = result
  else
    results[#results + 1], failure = FAILED, result
  end
end
-- In slices: unpack's stack is limited.
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[4], group, unpack(acks, i, math.min(i + 999, #acks)))
end
if failure then
  results[#results + 1] = type(failure) == 'table' and failure.err or tostring(failure)
end
return results
"""
)

# OFFLINE checks for any number of clients in one call.
# ARGV[1] presence stream cap
# ARGV[2] online.clients. prefix
# ARGV[3...] clients
# A client gets its OFFLINE when its key is gone and its OFFLINE is not out yet.
# Returns {how many were published, how many Redis failed, the last failure or ''}.
OFFLINE: Final = (
    _PRELUDE
    + """
local published, failed, failure = 0, 0, ''
local function check(client)
  if redis.call('EXISTS', ARGV[2] .. client) == 1 then return 0 end
  if not redis.call('ZSCORE', KEYS[1], client) then return 0 end
  publish_offline(client, redis.call('HGET', KEYS[2], client) or '', ARGV[1])
  return 1
end
expect_shared()
for i = 3, #ARGV do
  local ok, result = pcall(check, ARGV[i])
  if ok then
    published = published + result
  else
    failed = failed + 1
    failure = type(result) == 'table' and result.err or tostring(result)
  end
end
return {published, failed, failure}
"""
)

# The client's last connection to this server closed: the server stops
# holding it, and a heartbeat it added to the heartbeat stream before now no
# longer counts.
# ARGV[1] client
# ARGV[2] server
# ARGV[3] ttl ms
# ARGV[4] presence stream cap
# ARGV[5] the consumer group
# Returns LEFT when that published OFFLINE, KEPT when another server still
# holds the client (it becomes the client's server: its deadline is ahead, or
# a heartbeat of it may still be on its way) or it was not online.
LEAVE: Final = (
    _PRELUDE
    + """
local client, server, ttl, cap = ARGV[1], ARGV[2], tonumber(ARGV[3]), ARGV[4]
expect_shared()
expect(KEYS[5], 'string')
expect(KEYS[6], 'zset')
local horizon = math.min(now, applied_until(ARGV[5]))
-- Where the heartbeat stream stands: a heartbeat added after this leave, even
-- in the same millisecond, comes after it there.
local ms, seq = now - 1, 0
local ok, info = pcall(redis.call, 'XINFO', 'STREAM', KEYS[4])
if ok then
  for i = 1, #info, 2 do
    if info[i] == 'last-generated-id' then
      ms, seq = string.match(info[i + 1], '^(%d+)%-(%d+)$')
    end
  end
end
redis.call('ZREMRANGEBYSCORE', KEYS[6], '(0', horizon)
redis.call('ZADD', KEYS[6], -ms, server, -seq, '#' .. server)
if redis.call('PTTL', KEYS[6]) < ttl then redis.call('PEXPIRE', KEYS[6], ttl) end
-- The other holder with the latest deadline, if any.
local other = redis.call('ZREVRANGEBYSCORE', KEYS[6], '+inf', '(' .. horizon, 'WITHSCORES',
  'LIMIT', 0, 1)
if #other > 0 then
  local holder, deadline = other[1], tonumber(other[2])
  if redis.call('HGET', KEYS[2], client) == server then
    redis.call('HSET', KEYS[2], client, holder)
  end
  if redis.call('GET', KEYS[5]) == server then
    redis.call('SET', KEYS[5], holder, 'KEEPTTL')
  end
  if deadline > now and redis.call('ZSCORE', KEYS[1], client) then
    -- This server's heartbeats no longer count: the client's deadline is its
    -- other holder's. (One already past waits for the heartbeat on its way.)
    redis.call('ZADD', KEYS[1], deadline, client)
    if redis.call('EXISTS', KEYS[5]) == 1 then redis.call('PEXPIREAT', KEYS[5], deadline) end
  end
  return KEPT
end
if not redis.call('ZSCORE', KEYS[1], client) then return KEPT end
redis.call('DEL', KEYS[5])
publish_offline(client, redis.call('HGET', KEYS[2], client) or server, cap)
return LEFT
"""
)

# ARGV[1] how many clients to return at most
# ARGV[2] the consumer group
# Returns {now ms, {client, deadline ms, ...}}: the clients whose deadline has
# passed with every heartbeat sent before it applied, earliest first.
DUE: Final = (
    _PRELUDE
    + """
local horizon = math.min(now, applied_until(ARGV[2]))
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', horizon, 'WITHSCORES', 'LIMIT', 0, ARGV[1])
return {now, due}
"""
)

# This server's heartbeats, added to the heartbeat stream in one call, each
# entry as any platform's XADD adds it: a tick of 100,000 clients costs one
# reply to parse, not 100,000.
# ARGV[1] heartbeat stream cap
# ARGV[2] the server
# ARGV[3...] its clients
# Returns how many entries were added.
PUBLISH: Final = """
for i = 3, #ARGV do
  redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[1], '*', 'client', ARGV[i],
    'server', ARGV[2])
end
return #ARGV - 2
"""

# Returns {last presence entry id or '0-0', {client, server, ...}}: the online
# clients exactly as of that entry, so a reader can continue right after it.
SNAPSHOT: Final = """
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
return {position, redis.call('HGETALL', KEYS[2])}
"""

# Heartbeat entries left pending by a consumer that stopped, froze or lost
# Redis, taken over by this one. An entry is claimed only when it was found
# pending for over the claim delay twice, in this call and the one before: a
# Redis stall makes every entry look old once, and the calls its consumer
# queued behind the stall acknowledge it right after.
# ARGV[1] the consumer group
# ARGV[2] this consumer
# ARGV[3] the claim delay, ms
# ARGV[4] how many entries to find at most
# ARGV[5...] the entries found pending last time
# Returns {claimed entries {id, fields}, how many were deleted while pending
# (acknowledged: nothing to apply), found {id, consumer, ...}}.
CLAIM: Final = """
local group, me, idle = ARGV[1], ARGV[2], ARGV[3]
local entries, deleted = {}, 0
if #ARGV >= 5 then
  -- The ids, then JUSTID: unpack() would give only one value before it.
  local args = {'XCLAIM', KEYS[4], group, me, idle}
  for i = 5, #ARGV do args[#args + 1] = ARGV[i] end
  args[#args + 1] = 'JUSTID'
  local claimed = redis.call(unpack(args))
  local gone = {}
  for _, id in ipairs(claimed) do
    local found = redis.call('XRANGE', KEYS[4], id, id)
    if #found > 0 then entries[#entries + 1] = found[1] else gone[#gone + 1] = id end
  end
  -- Redis 6.2 keeps an entry deleted while pending in the list, and returns
  -- it as nil when it is claimed: acknowledge it, or it stays for ever.
  if #gone > 0 then redis.call('XACK', KEYS[4], group, unpack(gone)) end
  deleted = #gone
end
local found = {}
for _, p in ipairs(redis.call('XPENDING', KEYS[4], group, 'IDLE', idle, '-', '+', ARGV[4])) do
  found[#found + 1] = p[1]
  found[#found + 1] = p[2]
end
return {entries, deleted, found}
"""

# Removes the consumers idle for longer than ARGV[3] ms with nothing pending,
# in one step: a consumer that comes back and reads meanwhile keeps what it read.
# ARGV[1] the consumer group
# ARGV[2] this consumer (never removed)
# ARGV[3] ms
# Returns {name, ms idle, ...} of the consumers removed.
FORGET: Final = """
local removed = {}
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', KEYS[4], ARGV[1])
if not ok then return removed end
for _, c in ipairs(consumers) do
  local fields = {}
  for i = 1, #c, 2 do fields[c[i]] = c[i + 1] end
  if fields['name'] ~= ARGV[2] and fields['pending'] == 0
      and fields['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[4], ARGV[1], fields['name'])
    removed[#removed + 1] = fields['name']
    removed[#removed + 1] = fields['idle']
  end
end
return removed
"""


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
        self._shared = (k.deadlines, k.servers, k.presence, k.heartbeat)
        self._ttl_ms = settings.ttl_ms
        self._maxlen = settings.presence_maxlen
        self._scripts = {
            source: redis.register_script(source)
            for source in (HEARTBEAT, OFFLINE, LEAVE, DUE, SNAPSHOT, CLAIM, FORGET, PUBLISH)
        }

    def _queue(self, pipe: Pipeline, source: str, *args: Arg, client: str | None = None) -> None:
        keys: tuple[str, ...] = self._shared
        if client is not None:
            keys += (self._keys.online(client), self._keys.holders(client))
        pipe.evalsha(self._scripts[source].sha, len(keys), *keys, *args)

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
        ]

    def heartbeats(self, pipe: Pipeline, lines: Sequence[bytes]) -> None:
        """Apply heartbeats, each a line ``b"<client> <server> <sent>"``.

        ``sent`` is when it was sent: its heartbeat stream entry id, which the
        call then acknowledges unless Redis failed the heartbeat, or Unix ms
        (0 for now). The result is one code per heartbeat (``CAME_ONLINE``,
        ``REFRESHED``, ``STALE``, ``FAILED``), then the error of the last
        failure, if any.
        """
        pipe.execute_command(*self.heartbeat_command(lines))

    def publish(self, pipe: Pipeline, server: str, clients: Sequence[str], cap: int) -> None:
        """Add a heartbeat of ``server`` for each of ``clients`` to the heartbeat stream."""
        self._queue(pipe, PUBLISH, cap, server, *clients)

    def leave(self, pipe: Pipeline, client: str, server: str) -> None:
        """This server stops holding ``client``: ``LEFT`` or ``KEPT``."""
        args = (client, server, self._ttl_ms, self._maxlen, CONSUMER_GROUP)
        self._queue(pipe, LEAVE, *args, client=client)

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
        """Run the calls ``fill`` queues, in one round trip.

        A call's error is its result, so one bad key cannot fail a batch.
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

    async def snapshot(self) -> tuple[str, list[OnlineClient]]:
        """Online clients and the presence stream position they are exact at."""
        position, flat = await self.run(lambda pipe: self._queue(pipe, SNAPSHOT))
        clients = [OnlineClient(text(flat[i]), text(flat[i + 1])) for i in range(0, len(flat), 2)]
        return text(position), clients
