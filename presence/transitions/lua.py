"""The Lua every script shares: result codes, clocks, type checks, and the
rules of a *scope*: global presence, or one room.

A scope is announced state plus a transition stream:

    global  online.deadlines, online.servers, presence,
            online.clients.<id>, online.holders.<id>
    room    room.{R}.deadlines, room.{R}.members, room.{R}.presence,
            room.{R}.holders.<id>, and room.{R}.data for member data

Both follow the same rules (``apply``, ``leave``, ``offline``), so a room
membership comes and goes exactly as a client does: once across servers, after
a leave grace, never on a late or stale heartbeat. A room's keys share the hash
tag ``{R}``; only ``rooms.due``, the sweeper's index, lies outside it.

Every key a script touches is in its KEYS, named by the caller (``scripts``
builds them from ``contract.Keys``): no script builds a key name, so Redis
Cluster and proxies that check KEYS take them all. Every script takes the same
five keys, in the same order, and uses those it needs:

    KEYS[1] online.deadlines   KEYS[2] online.servers
    KEYS[3] presence stream    KEYS[4] heartbeat stream
    KEYS[5] rooms.due

A script about clients or rooms adds theirs after them; a room's always in
this order (``room_scope``), its holders only where a membership is concerned:

    room.{R}.deadlines  room.{R}.members  room.{R}.data  room.{R}.presence
    [room.{R}.holders.<id>]

Times come from Redis ``TIME`` so that every server uses one clock.
"""

from __future__ import annotations

from typing import Final

from ..contract import EMPTY_ROOM_TTL, WEBHOOKS_GROUP, WEBHOOKS_MARKER

# Result codes, one per heartbeat (HEARTBEAT) or per leave (LEAVE).
CAME_ONLINE: Final = 1
REFRESHED: Final = 0
#: Nothing changed: sent before its server announced the client left it, or
#: older than the TTL (then it may still move the deadline of a client that
#: is announced, see ``apply``).
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
    f"local EMPTY_ROOM_TTL = {EMPTY_ROOM_TTL * 1000}\n"
    f"local WEBHOOKS_MARKER, WEBHOOKS_GROUP = '{WEBHOOKS_MARKER}', '{WEBHOOKS_GROUP}'\n"
)

PRELUDE: Final = (
    _CODES
    + """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Set by each script from its ARGV: ttl (ms), cap (presence stream),
-- room_cap (room streams), group (the consumer group), retention (ms a last
-- OFFLINE time is kept; 0 keeps none).
local cfg = {retention = 0}

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
local function applied_until()
  local ok, groups = pcall(redis.call, 'XINFO', 'GROUPS', KEYS[4])
  if not ok then return now end
  local last
  for _, g in ipairs(groups) do
    local fields = {}
    for i = 1, #g, 2 do fields[g[i]] = g[i + 1] end
    if fields['name'] == cfg.group then last = fields['last-delivered-id'] end
  end
  if not last then return now end
  local horizon = now
  local pending = redis.call('XPENDING', KEYS[4], cfg.group)
  if pending[1] > 0 then horizon = math.min(horizon, ms_of(pending[2])) end
  local unread = redis.call('XRANGE', KEYS[4], '(' .. last, '+', 'COUNT', 1)
  if #unread > 0 then horizon = math.min(horizon, ms_of(unread[1][1])) end
  return math.min(now, horizon)
end

-- The types of the shared keys: checked before any write.
local function expect_shared()
  expect(KEYS[1], 'zset')
  expect(KEYS[2], 'hash')
  expect(KEYS[3], 'stream')
  expect(KEYS[5], 'zset')
end

-- seen: the scope's last_seen key, given where the script can end a client.
local function global_scope(online, holders, seen)
  return {deadlines = KEYS[1], servers = KEYS[2], stream = KEYS[3],
    online = online, holders = holders, seen = seen}
end

-- The room's keys from KEYS[at] on, in their order (deadlines, members, data,
-- presence, then holders.<id> where the script is about one membership).
local function room_scope(room, at, seen)
  return {deadlines = KEYS[at], servers = KEYS[at + 1], data = KEYS[at + 2],
    stream = KEYS[at + 3], holders = KEYS[at + 4], room = room, seen = seen}
end

-- A room's own keys, checked before any write (the holders are checked
-- where they are read first).
local function expect_room(scope)
  expect(scope.deadlines, 'zset')
  expect(scope.servers, 'hash')
  expect(scope.stream, 'stream')
  expect(scope.data, 'hash')
end

local function publish(scope, client, status, server, data)
  if not scope.room then
    return redis.call('XADD', scope.stream, 'MAXLEN', '~', cfg.cap, '*', 'client', client,
      'status', status, 'server', server)
  end
  -- Webhooks on (their marker in rooms.due, see presence/webhooks/streams.py):
  -- the room goes into their index, and a new stream gets their group.
  local hooked = redis.call('ZSCORE', KEYS[5], WEBHOOKS_MARKER)
  local fresh = hooked and redis.call('EXISTS', scope.stream) == 0
  local id
  if data and data ~= '' then
    id = redis.call('XADD', scope.stream, 'MAXLEN', '~', cfg.room_cap, '*', 'room', scope.room,
      'client', client, 'status', status, 'server', server, 'data', data)
  else
    id = redis.call('XADD', scope.stream, 'MAXLEN', '~', cfg.room_cap, '*', 'room', scope.room,
      'client', client, 'status', status, 'server', server)
  end
  if hooked then
    -- '#' .. room: never the marker ('#' alone), nor a room (no id has a '#').
    local indexed = redis.call('ZADD', KEYS[5], 'NX', '+inf', '#' .. scope.room)
    if fresh or indexed == 1 then
      -- From this entry on; a group already there (BUSYGROUP) keeps its place.
      local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
      local before = seq ~= '0' and (ms .. '-' .. string.format('%d', tonumber(seq) - 1))
        or (string.format('%d', tonumber(ms) - 1) .. '-18446744073709551615')
      pcall(redis.call, 'XGROUP', 'CREATE', scope.stream, WEBHOOKS_GROUP, before)
    end
  end
  return id
end

-- The only way a client (or member) stops being announced.
-- Last seen is an extra: a key of another type in its place (someone else's)
-- goes unwritten rather than holding every OFFLINE back.
local function recordable(key)
  local kind = redis.call('TYPE', key)['ok']
  return kind == 'zset' or kind == 'none'
end

local function offline(scope, client, server)
  redis.call('ZREM', scope.deadlines, client)
  redis.call('HDEL', scope.servers, client)
  if scope.room then redis.call('HDEL', scope.data, client) end
  local id = publish(scope, client, 'OFFLINE', server)
  if scope.seen and cfg.retention > 0 and recordable(scope.seen) then
    -- Last seen at the OFFLINE entry's time; what is older than the retention
    -- goes, each entry once, so the set holds the clients of one retention.
    local at = ms_of(id)
    redis.call('ZADD', scope.seen, at, client)
    redis.call('ZREMRANGEBYSCORE', scope.seen, '-inf', '(' .. (at - cfg.retention))
    if scope.room then redis.call('PEXPIRE', scope.seen, cfg.retention) end
  end
  if scope.room and redis.call('ZCARD', scope.deadlines) == 0 then
    -- Empty: out of the sweeper's index; its stream stays a while, for
    -- streams resuming after its last transitions.
    redis.call('ZREM', KEYS[5], scope.room)
    redis.call('PEXPIRE', scope.stream, EMPTY_ROOM_TTL)
  end
end

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

-- A member's data, sent with a heartbeat: one UPDATE when it changed.
-- Initial data (a stream's ?data=) only fills in a member that has none: it
-- counts when the membership begins (or began without data, its heartbeat
-- applied late), never over data set since, such as a PUT's.
local function changes(data, stored, initial)
  return data ~= '' and stored ~= data and not (initial and stored)
end

local function set_data(scope, client, server, data, stored, initial)
  if changes(data, stored, initial) then
    redis.call('HSET', scope.data, client, data)
    publish(scope, client, 'UPDATE', server, data)
  end
end

-- One heartbeat of server for client in scope, sent at heartbeat stream
-- position ms-seq (ms 0: now). data: the member's data ('' keeps it);
-- initial: it only fills in (see set_data). first, if given, runs once this
-- heartbeat's reads are done, before its first write: a room heartbeat's
-- global part, so that a room key of the wrong type fails them both before
-- either wrote.
--
-- Every key is read before anything is written, and Redis fails a read of a
-- key of the wrong type: that, not a TYPE per key, is what makes a heartbeat
-- all or nothing. Only the room's stream is written unread: its type is
-- checked when it is about to be written. A membership begins only where it
-- can end: its OFFLINE writes the room's data and stream, so both are checked
-- then, whatever the heartbeat writes.
local function apply(scope, client, server, ms, seq, data, initial, first)
  if ms == 0 then ms, seq = now, math.huge end  -- sent now: after any leave
  local deadline = math.min(ms, now) + cfg.ttl
  local announced = redis.call('ZSCORE', scope.deadlines, client)
  if deadline <= now then
    -- Older than the TTL: it never fails (it would hold the sweeper back, see
    -- applied_until), and never brings a client back. Applied late (the
    -- consumers are behind) for a client still announced, it proves the
    -- client was online when it was sent: its deadline moves up to there.
    local proves = false
    if announced then
      local ok, left = pcall(left_after, scope.holders, server, ms, seq)
      proves = ok and not left
    end
    if first then first() end
    if proves then redis.call('ZADD', scope.deadlines, 'GT', deadline, client) end
    return STALE
  end
  if left_after(scope.holders, server, ms, seq) then
    if first then first() end
    return STALE
  end
  local old, stored
  if scope.room then
    old = redis.call('HGET', scope.servers, client)
    if data ~= '' or not announced then stored = redis.call('HGET', scope.data, client) end
    if not announced or changes(data, stored, initial) then expect(scope.stream, 'stream') end
  else
    old = redis.call('GET', scope.online)
  end
  if first then first() end
  redis.call('ZADD', scope.holders, 'GT', deadline, server)
  -- Every entry's deadline, and any leave worth remembering, ends within a
  -- TTL of now: one PEXPIRE covers them all.
  redis.call('PEXPIRE', scope.holders, cfg.ttl)
  if announced and tonumber(announced) > deadline and old then
    -- A newer heartbeat was applied first: never move a deadline back. Its
    -- data still counts (sent with a connection's first heartbeat, it may
    -- reach Redis after that connection's next one).
    set_data(scope, client, old, data, stored, initial)
    return REFRESHED
  end
  if scope.online then redis.call('SET', scope.online, server, 'PX', deadline - now) end
  redis.call('ZADD', scope.deadlines, deadline, client)
  if announced then
    -- Still announced, so a refresh: also when the key expired before its
    -- OFFLINE went out (Redis was unreachable, or the consumers are behind).
    if old ~= server then redis.call('HSET', scope.servers, client, server) end
    set_data(scope, client, server, data, stored, initial)
    return REFRESHED
  end
  redis.call('HSET', scope.servers, client, server)
  if data ~= '' then redis.call('HSET', scope.data, client, data) end
  publish(scope, client, 'ONLINE', server, data)
  if scope.room then
    redis.call('PERSIST', scope.stream)
    redis.call('ZADD', KEYS[5], 'LT', deadline, scope.room)
  end
  return CAME_ONLINE
end

-- The client's last connection in scope on this server closed: the server
-- stops holding it there, and a heartbeat it added to the heartbeat stream
-- before now no longer counts. LEFT when that published OFFLINE; KEPT when
-- another server still holds it (it becomes the server: its deadline is
-- ahead, or a heartbeat of it may still be on its way) or it was not in.
local function leave(scope, client, server)
  local horizon = applied_until()
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
  redis.call('ZREMRANGEBYSCORE', scope.holders, '(0', horizon)
  redis.call('ZADD', scope.holders, -ms, server, -seq, '#' .. server)
  if redis.call('PTTL', scope.holders) < cfg.ttl then
    redis.call('PEXPIRE', scope.holders, cfg.ttl)
  end
  -- The other holder with the latest deadline, if any.
  local other = redis.call('ZREVRANGEBYSCORE', scope.holders, '+inf', '(' .. horizon,
    'WITHSCORES', 'LIMIT', 0, 1)
  if #other > 0 then
    local holder, deadline = other[1], tonumber(other[2])
    if redis.call('HGET', scope.servers, client) == server then
      redis.call('HSET', scope.servers, client, holder)
    end
    if scope.online and redis.call('GET', scope.online) == server then
      redis.call('SET', scope.online, holder, 'KEEPTTL')
    end
    if deadline > now and redis.call('ZSCORE', scope.deadlines, client) then
      -- This server's heartbeats no longer count: the client's deadline is its
      -- other holder's. (One already past waits for the heartbeat on its way.)
      redis.call('ZADD', scope.deadlines, deadline, client)
      if scope.online and redis.call('EXISTS', scope.online) == 1 then
        redis.call('PEXPIREAT', scope.online, deadline)
      end
      if scope.room then redis.call('ZADD', KEYS[5], 'LT', deadline, scope.room) end
    end
    return KEPT
  end
  if not redis.call('ZSCORE', scope.deadlines, client) then return KEPT end
  if scope.online then redis.call('DEL', scope.online) end
  offline(scope, client, redis.call('HGET', scope.servers, client) or server)
  return LEFT
end
"""
)
