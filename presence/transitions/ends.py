"""The scripts that end presence: a client's or member's OFFLINE when its
key is gone, its leave from this server, and the sweepers' reading of what
is due. The shared rules are in ``lua``; the scripts that bring presence in,
in ``sources``."""

from __future__ import annotations

from typing import Final

from .lua import PRELUDE

# OFFLINE checks for any number of clients in one call.
# KEYS[6] last_seen
# KEYS[7...] online.clients.<id> of each client, in their order
# ARGV[1] presence stream cap
# ARGV[2] last-seen retention ms
# ARGV[3] 1: only keys deleted before their deadline count (a key that expired
#         is the sweeper's, which waits out outages); 0: any key gone
# ARGV[4...] clients
# A client gets its OFFLINE when its key is gone and its OFFLINE is not out yet.
# Returns {how many were published, how many Redis failed, the last failure or ''}.
OFFLINE: Final = (
    PRELUDE
    + """
cfg.cap, cfg.retention = ARGV[1], tonumber(ARGV[2])
local deleted = ARGV[3] == '1'
local published, failed, failure = 0, 0, ''
local function check(client, online)
  if redis.call('EXISTS', online) == 1 then return 0 end
  local deadline = redis.call('ZSCORE', KEYS[1], client)
  if not deadline then return 0 end
  if deleted and tonumber(deadline) <= now then return 0 end
  offline(global_scope(nil, nil, KEYS[6]), client, redis.call('HGET', KEYS[2], client) or '')
  return 1
end
expect_shared()
for i = 4, #ARGV do
  local ok, result = pcall(check, ARGV[i], KEYS[i + 3])
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

# The client's last connection to this server closed (see ``leave``).
# KEYS[6] online.clients.<id>   KEYS[7] online.holders.<id>   KEYS[8] last_seen
# ARGV[1] client
# ARGV[2] server
# ARGV[3] ttl ms
# ARGV[4] presence stream cap
# ARGV[5] the consumer group
# ARGV[6] last-seen retention ms
# Returns LEFT or KEPT.
LEAVE: Final = (
    PRELUDE
    + """
cfg.ttl, cfg.cap, cfg.group = tonumber(ARGV[3]), ARGV[4], ARGV[5]
cfg.retention = tonumber(ARGV[6])
expect_shared()
expect(KEYS[6], 'string')
expect(KEYS[7], 'zset')
return leave(global_scope(KEYS[6], KEYS[7], KEYS[8]), ARGV[1], ARGV[2])
"""
)

# The client's last connection in a room on this server closed (see ``leave``).
# KEYS[6...10] the room's keys, holders.<id> of the client last (room_scope)
# KEYS[11] the room's last_seen
# ARGV[1] room
# ARGV[2] client
# ARGV[3] server
# ARGV[4] ttl ms
# ARGV[5] room stream cap
# ARGV[6] the consumer group
# ARGV[7] last-seen retention ms
# Returns LEFT or KEPT.
ROOM_LEAVE: Final = (
    PRELUDE
    + """
cfg.ttl, cfg.room_cap, cfg.group = tonumber(ARGV[4]), ARGV[5], ARGV[6]
cfg.retention = tonumber(ARGV[7])
local scope = room_scope(ARGV[1], 6, KEYS[11])
expect_shared()
expect_room(scope)
expect(scope.holders, 'zset')
return leave(scope, ARGV[2], ARGV[3])
"""
)

# ARGV[1] how many clients to return at most
# ARGV[2] the consumer group
# Returns {now ms, {client, deadline ms, ...}}: the clients whose deadline has
# passed with every heartbeat sent before it applied, earliest first.
DUE: Final = (
    PRELUDE
    + """
cfg.group = ARGV[2]
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', applied_until(), 'WITHSCORES',
  'LIMIT', 0, ARGV[1])
return {now, due}
"""
)

# The rooms due in rooms.due, for ROOM_SWEEP to visit one by one: it cannot
# declare a room's keys before this has read which rooms are due.
# ARGV[1] how many rooms to return at most
# ARGV[2] the consumer group
# Returns {horizon, rooms}: the Unix ms up to which every heartbeat sent has
# been applied (applied_until), and the rooms due by then, earliest first.
ROOMS_DUE: Final = (
    PRELUDE
    + """
cfg.group = ARGV[2]
local horizon = applied_until()
return {horizon, redis.call('ZRANGEBYSCORE', KEYS[5], '-inf', horizon, 'LIMIT', 0, ARGV[1])}
"""
)

# The room sweeper, one room a call: OFFLINE for every member whose deadline is
# at or before the horizon ROOMS_DUE read, then the room's index time moves to
# its earliest deadline. Decided from the room's state alone, so a room swept
# twice, by one server or at once by several, publishes each OFFLINE once.
# KEYS[6...9] the room's keys (room_scope)   KEYS[10] the room's last_seen
# ARGV[1] room
# ARGV[2] room stream cap
# ARGV[3] the horizon, Unix ms (ROOMS_DUE's)
# ARGV[4] how many members to take out at most (one with more left stays due:
#         the next call goes on)
# ARGV[5] last-seen retention ms
# Returns {published, 1 when members due are left (else 0), the failure or ''}.
ROOM_SWEEP: Final = (
    PRELUDE
    + """
cfg.room_cap, cfg.retention = ARGV[2], tonumber(ARGV[5])
local room, horizon = ARGV[1], ARGV[3]
local scope = room_scope(room, 6, KEYS[10])
local function sweep()
  expect_room(scope)
  local due = redis.call('ZRANGEBYSCORE', scope.deadlines, '-inf', horizon, 'LIMIT', 0, ARGV[4])
  for _, client in ipairs(due) do
    offline(scope, client, redis.call('HGET', scope.servers, client) or '')
  end
  local first = redis.call('ZRANGE', scope.deadlines, 0, 0, 'WITHSCORES')
  if #first == 0 then
    redis.call('ZREM', KEYS[5], room)
    return #due, 0
  end
  redis.call('ZADD', KEYS[5], first[2], room)
  return #due, tonumber(first[2]) <= tonumber(horizon) and 1 or 0
end
expect(KEYS[5], 'zset')
local ok, published, left = pcall(sweep)
if ok then return {published, left, ''} end
local failure = type(published) == 'table' and published.err or tostring(published)
-- A key that is not a room's: never visited again. Anything else (out of
-- memory) may pass: the room stays due.
if string.find(failure, 'WRONGTYPE', 1, true) then redis.call('ZREM', KEYS[5], room) end
return {0, 0, failure}
"""
)
