"""The Lua scripts: every transition happens inside one of them, atomically.

The deadline index (``online.deadlines``, client -> Unix ms) and the server
hash (``online.servers``) hold the *announced* state: a client is in them from
the moment its ``ONLINE`` is in the presence stream until its ``OFFLINE`` is.
A room's ``deadlines`` and ``members`` do the same for its members. Every
script that publishes decides from that state, never from an event, which is
what makes a late keyspace event, a sweeper and several servers racing for
the same client publish each transition once.

Each script reads everything it decides from before its first write, and
makes sure before it that every key it writes holds its type (Redis fails a
read of a key of the wrong type; a key written unread is checked with
``TYPE``): Redis has no rollback, so a script that fails, fails before it
changed anything. Every key a script touches is in its KEYS, named by
``Transitions``. The shared rules are in ``lua``.
"""

from __future__ import annotations

from typing import Final

from .lua import PRELUDE

#: Seconds of heartbeats the stream keeps at least (with short TTLs).
HEARTBEATS_KEPT = 10

# Any number of heartbeats in one call, all in one argument: one round of
# script overhead, and next to nothing to encode, for a whole batch read from
# the stream. Each heartbeat's keys follow the shared ones, line after line,
# and ARGV[6] says how many each line has, so that the script walks them with
# an index whatever it makes of the line:
#   0  none of its own: a line the caller found malformed, or a global line
#      of the client whose global keys came last (they count for it too)
#   2  online.clients.<id>, online.holders.<id>
#   5  a room line of the client whose global keys came last: the room's
#      five keys (room_scope's order, holders.<id> last)
#   7  a room line: its client's two global keys, then the room's five
#   9  a room line counted for the room alone: the room's five keys (sharded,
#      the client's global presence lives on its own shard, and its own
#      heartbeat goes there)
# (A client's rooms come side by side: its global keys once for them all.)
# ARGV[1] ttl ms
# ARGV[2] presence stream cap
# ARGV[3] the consumer group
# ARGV[4] one line per heartbeat: "<client> <server> <sent>[ <room>[ <data>]]";
#         sent is its heartbeat entry id, which is acknowledged in the same
#         call unless Redis failed the heartbeat, or Unix ms (0 = now); data
#         is a JSON object on one line, after a "?" when it is initial data
#         (only for a member that has none)
# ARGV[5] room stream cap
# ARGV[6] one digit per line: how many keys it has, as above
# Returns one code per heartbeat (CAME_ONLINE, REFRESHED, STALE, FAILED),
# for the client's global presence (for its room, with a line counted for the
# room alone); after a failure, the last element is its error.
HEARTBEAT: Final = (
    PRELUDE
    + """
cfg.ttl, cfg.cap, cfg.group = tonumber(ARGV[1]), ARGV[2], ARGV[3]
cfg.room_cap = ARGV[5]
local sizes = ARGV[6]
-- The client whose global keys were declared last, and those keys.
local owner, online, holders
-- A heartbeat with a room counts for the client's global presence too. A
-- client in five rooms sends five in a row, in one millisecond: after the
-- first, the global part would set the same deadline again, so it is skipped.
local applied = {}  -- client, server and ms of the global part applied last
-- The heartbeat applied now, for global_part, and its code.
local client, server, ms, seq, code
local function global_part()
  if ms == 0 or applied[1] ~= client or applied[2] ~= server or applied[3] ~= ms then
    code = apply(global_scope(online, holders), client, server, ms, seq, '', false)
    applied = code >= REFRESHED and {client, server, ms} or {}
  end
end
local function heartbeat(rest, at, size)
  local room, data, initial
  if rest ~= '' then
    room, initial, data = string.match(rest, '^ (%S+) ?(%??)(.*)$')
    if not room then error('malformed room ' .. rest) end
    initial = initial == '?'
  end
  if size == 9 then
    if not room then error('undeclared keys for heartbeat ' .. client .. ' ' .. rest) end
    return apply(room_scope(room, at), client, server, ms, seq, data, initial)
  end
  if size == 2 or size == 7 then
    owner, online, holders = client, KEYS[at], KEYS[at + 1]
    at = at + 2
  end
  if owner ~= client or (size >= 5) ~= (room ~= nil) then
    error('undeclared keys for heartbeat ' .. client .. ' ' .. rest)
  end
  code = REFRESHED
  if room then
    -- The room's reads, then the global part, then the room's writes: all
    -- or nothing for the two.
    apply(room_scope(room, at), client, server, ms, seq, data, initial, global_part)
  else
    global_part()
  end
  return code
end
expect_shared()
local results, acks, failure = {}, {}, nil
local at, n = 6, 0  -- the next line's first key; lines so far
for line in string.gmatch(ARGV[4], '[^\\n]+') do
  n = n + 1
  local size = string.byte(sizes, n) - 48
  local sent, ms_text, seq_text, rest
  client, server, sent, ms_text, seq_text, rest =
    string.match(line, '^(%S+) (%S+) ((%d+)%-?(%d*))(.*)$')
  local ok, result = false, 'malformed heartbeat ' .. line
  if client then
    ms, seq = tonumber(ms_text), tonumber(seq_text) or 0
    ok, result = pcall(heartbeat, rest, at, size)
    if ok and seq_text ~= '' then acks[#acks + 1] = sent end
  end
  at = at + (size == 9 and 5 or size)
  if ok then
    results[#results + 1] = result
  else
    results[#results + 1], failure = FAILED, result
  end
end
-- In slices: unpack's stack is limited.
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[4], cfg.group, unpack(acks, i, math.min(i + 999, #acks)))
end
if failure then
  results[#results + 1] = type(failure) == 'table' and failure.err or tostring(failure)
end
return results
"""
)

# This server's heartbeats, added to the heartbeat stream in one call, each
# entry as any platform's XADD adds it: a tick of 100,000 clients costs one
# reply to parse, not 100,000. All in one argument, as HEARTBEAT's: a call of
# 1,000 heartbeats as 3,000 arguments cost the server more to encode than
# everything else its tick does.
# The stream is trimmed by age: entries older than twice the TTL (and than
# MIN_KEEP ms, for whoever inspects it), but never
# one the group has not applied (it may still move a deadline, and the
# sweeper waits for it; see applied_until). A count would trim entries nobody
# read whenever a tick adds more than the cap; the cap is only a ceiling
# against runaway producers.
# ARGV[1] heartbeat stream cap
# ARGV[2] the server
# ARGV[3] one line per heartbeat: "<client>[ <room>[ <data>]]"; data is a
#         JSON object on one line, added as the field data, or after a "?"
#         as the field initial
# ARGV[4] ttl ms
# ARGV[5] the consumer group
# Returns how many entries were added.
PUBLISH: Final = (
    PRELUDE
    + f"local MIN_KEEP = {HEARTBEATS_KEPT * 1000}\n"
    + """
cfg.group = ARGV[5]
local keep = math.min(now - math.max(2 * tonumber(ARGV[4]), MIN_KEEP), applied_until())
local oldest = string.format('%d-0', math.max(0, keep))
local added = 0
for line in string.gmatch(ARGV[3], '[^\\n]+') do
  local client, room, data = string.match(line, '^(%S+) ?(%S*) ?(.*)$')
  if room == '' then
    redis.call('XADD', KEYS[4], 'MINID', '~', oldest, '*', 'client', client,
      'server', ARGV[2])
  elseif data == '' then
    redis.call('XADD', KEYS[4], 'MINID', '~', oldest, '*', 'client', client,
      'server', ARGV[2], 'room', room)
  elseif string.sub(data, 1, 1) == '?' then
    redis.call('XADD', KEYS[4], 'MINID', '~', oldest, '*', 'client', client,
      'server', ARGV[2], 'room', room, 'initial', string.sub(data, 2))
  else
    redis.call('XADD', KEYS[4], 'MINID', '~', oldest, '*', 'client', client,
      'server', ARGV[2], 'room', room, 'data', data)
  end
  added = added + 1
end
redis.call('XTRIM', KEYS[4], 'MAXLEN', '~', ARGV[1])
return added
"""
)

# Returns {last presence entry id or '0-0', {client, server, ...}}: the online
# clients exactly as of that entry, so a reader can continue right after it.
# With ARGV, only those clients: {position, {server or false, ...}}.
SNAPSHOT: Final = """
local last = redis.call('XREVRANGE', KEYS[3], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
if #ARGV > 0 then return {position, redis.call('HMGET', KEYS[2], unpack(ARGV))} end
return {position, redis.call('HGETALL', KEYS[2])}
"""

# A room's members exactly as of its stream's last entry.
# KEYS[6...9] the room's keys (room_scope): members, data and presence are read
# Returns {last room entry id or '0-0', {client, server, ...}, {client, data, ...}}.
ROOM_SNAPSHOT: Final = """
local last = redis.call('XREVRANGE', KEYS[9], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
return {position, redis.call('HGETALL', KEYS[7]), redis.call('HGETALL', KEYS[8])}
"""

# Replace a member's data; an unchanged value publishes nothing.
# KEYS[6...9] the room's keys (room_scope)
# ARGV[1] room
# ARGV[2] client
# ARGV[3] data, a JSON object on one line
# ARGV[4] room stream cap
# Returns 1 when it published UPDATE, 0 when the data was the same, -1 when
# the client is not a member of the room.
SET_DATA: Final = (
    PRELUDE
    + """
cfg.room_cap = ARGV[4]
local client, data = ARGV[2], ARGV[3]
local scope = room_scope(ARGV[1], 6)
expect_room(scope)
expect(KEYS[5], 'zset')  -- the UPDATE may index the room for webhooks
if not redis.call('ZSCORE', scope.deadlines, client) then return -1 end
if redis.call('HGET', scope.data, client) == data then return 0 end
redis.call('HSET', scope.data, client, data)
publish(scope, client, 'UPDATE', redis.call('HGET', scope.servers, client) or '', data)
return 1
"""
)

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
# KEYS[6] the stream, if not the heartbeat stream (the webhooks' group)
# ARGV[1] the consumer group
# ARGV[2] this consumer (never removed)
# ARGV[3] ms
# Returns {name, ms idle, ...} of the consumers removed.
FORGET: Final = """
local removed = {}
local stream = KEYS[6] or KEYS[4]
local ok, consumers = pcall(redis.call, 'XINFO', 'CONSUMERS', stream, ARGV[1])
if not ok then return removed end
for _, c in ipairs(consumers) do
  local fields = {}
  for i = 1, #c, 2 do fields[c[i]] = c[i + 1] end
  if fields['name'] ~= ARGV[2] and fields['pending'] == 0
      and fields['idle'] >= tonumber(ARGV[3]) then
    redis.call('XGROUP', 'DELCONSUMER', stream, ARGV[1], fields['name'])
    removed[#removed + 1] = fields['name']
    removed[#removed + 1] = fields['idle']
  end
end
return removed
"""
