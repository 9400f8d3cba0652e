"""Lua scripts: every transition happens inside one of them, atomically.

The deadline index (``online.deadlines``, client -> Unix ms) and the server
hash (``online.servers``) hold the *announced* state: a client is in them from
the moment its ``ONLINE`` is in the presence stream until its ``OFFLINE`` is.
Both scripts that publish decide from that state, never from an event, which is
what makes a late keyspace event, a sweeper and several servers racing for the
same client publish each transition once.

Times come from Redis ``TIME`` so that every server uses one clock.
"""

from typing import Final

_NOW = """
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
"""

# KEYS[1] online.clients.<id>  KEYS[2] online.deadlines  KEYS[3] online.servers
# KEYS[4] presence stream  KEYS[5] online.holders.<id>
# ARGV[1] client  ARGV[2] server  ARGV[3] ttl ms  ARGV[4] presence stream cap
# ARGV[5] when the heartbeat was sent, Unix ms (its stream entry id); 0 = now
# Returns 1 when the client came online, 0 for a refresh, -1 for a heartbeat
# older than the ttl or sent before its server announced the client left it
# (nothing is written).
HEARTBEAT: Final = (
    _NOW
    + """
local sent = tonumber(ARGV[5])
if sent == 0 or sent > now then sent = now end
local deadline = sent + tonumber(ARGV[3])
if deadline <= now then return -1 end
local held = tonumber(redis.call('ZSCORE', KEYS[5], ARGV[2]) or '0')
if held < 0 and sent <= -held then return -1 end
redis.call('ZADD', KEYS[5], 'GT', deadline, ARGV[2])
if redis.call('PTTL', KEYS[5]) < deadline - now then
  redis.call('PEXPIRE', KEYS[5], deadline - now)
end
local announced = redis.call('ZSCORE', KEYS[2], ARGV[1])
if announced and tonumber(announced) > deadline and redis.call('EXISTS', KEYS[1]) == 1 then
  return 0  -- a newer heartbeat was applied first: never move a deadline back
end
local old = redis.call('SET', KEYS[1], ARGV[2], 'PX', deadline - now, 'GET')
redis.call('ZADD', KEYS[2], deadline, ARGV[1])
if announced then
  -- Still announced, so a refresh: also when the key expired before its
  -- OFFLINE went out (Redis was unreachable, or the sweeper is behind).
  if old ~= ARGV[2] then redis.call('HSET', KEYS[3], ARGV[1], ARGV[2]) end
  return 0
end
redis.call('HSET', KEYS[3], ARGV[1], ARGV[2])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'client', ARGV[1],
  'status', 'ONLINE', 'server', ARGV[2])
return 1
"""
)

# KEYS[1] online.clients.<id>  KEYS[2] online.deadlines  KEYS[3] online.servers
# KEYS[4] presence stream
# ARGV[1] client  ARGV[2] presence stream cap
# Returns 1 when it published OFFLINE, 0 when the client is still online
# (its key exists) or its OFFLINE is already out.
OFFLINE: Final = """
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local server = redis.call('HGET', KEYS[3], ARGV[1]) or ''
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[2], '*', 'client', ARGV[1],
  'status', 'OFFLINE', 'server', server)
return 1
"""

# KEYS[1] online.clients.<id>  KEYS[2] online.deadlines  KEYS[3] online.servers
# KEYS[4] presence stream  KEYS[5] online.holders.<id>
# ARGV[1] client  ARGV[2] server  ARGV[3] ttl ms  ARGV[4] presence stream cap
# The client's last connection to this server closed: the server stops
# holding it, and a heartbeat it sent before now no longer counts. Returns 1
# when that published OFFLINE, 0 when another server still holds the client
# (it becomes the client's server) or it was not online.
LEAVE: Final = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[5], 0, now)
redis.call('ZADD', KEYS[5], -now, ARGV[2])
if redis.call('PTTL', KEYS[5]) < tonumber(ARGV[3]) then
  redis.call('PEXPIRE', KEYS[5], ARGV[3])
end
local other = redis.call('ZRANGEBYSCORE', KEYS[5], '(' .. now, '+inf', 'LIMIT', 0, 1)
if #other > 0 then
  if redis.call('HGET', KEYS[3], ARGV[1]) == ARGV[2] then
    redis.call('HSET', KEYS[3], ARGV[1], other[1])
  end
  if redis.call('GET', KEYS[1]) == ARGV[2] then
    redis.call('SET', KEYS[1], other[1], 'KEEPTTL')
  end
  return 0
end
if not redis.call('ZSCORE', KEYS[2], ARGV[1]) then return 0 end
local server = redis.call('HGET', KEYS[3], ARGV[1]) or ARGV[2]
redis.call('DEL', KEYS[1])
redis.call('ZREM', KEYS[2], ARGV[1])
redis.call('HDEL', KEYS[3], ARGV[1])
redis.call('XADD', KEYS[4], 'MAXLEN', '~', ARGV[4], '*', 'client', ARGV[1],
  'status', 'OFFLINE', 'server', server)
return 1
"""
)

# KEYS[1] online.deadlines
# ARGV[1] how many clients to return at most
# Returns {now ms, {client, deadline ms, ...}}: the clients whose deadline has
# passed, earliest first.
DUE: Final = (
    _NOW
    + """
return {now, redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'WITHSCORES', 'LIMIT', 0, ARGV[1])}
"""
)

# KEYS[1] online.servers  KEYS[2] presence stream
# Returns {last presence entry id or '0-0', {client, server, ...}}: the online
# clients exactly as of that entry, so a reader can continue right after it.
SNAPSHOT: Final = """
local last = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', 1)
local position = '0-0'
if #last > 0 then position = last[1][1] end
return {position, redis.call('HGETALL', KEYS[1])}
"""
