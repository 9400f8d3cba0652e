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

# Any number of heartbeats in one call, all in one argument: one round of
# script overhead, and next to nothing to encode, for a whole batch read from
# the stream. The per-client keys are built here from their prefixes (this is
# a standalone-Redis script: its keys live in different slots anyway).
# KEYS[1] online.deadlines  KEYS[2] online.servers  KEYS[3] presence stream
# KEYS[4] heartbeat stream
# ARGV[1] ttl ms  ARGV[2] presence stream cap
# ARGV[3] online.clients. prefix  ARGV[4] online.holders. prefix
# ARGV[5] one line per heartbeat: "<client> <server> <sent>", sent = when it
# was sent, Unix ms or the heartbeat's stream entry id (its ms count), 0 = now
# ARGV[6] the consumer group: a heartbeat sent as an entry id is acknowledged
# in the same call unless Redis failed it, so an entry is either applied (or
# found stale) and acknowledged, or still pending, to be claimed and retried.
# Returns one code per heartbeat: 1 when the client came online, 0 for a
# refresh, -1 for a heartbeat older than the ttl or sent before its server
# announced the client left it (nothing is written), -2 when Redis failed it
# or the line was malformed (then the last element is that error); the
# others are applied regardless.
HEARTBEAT: Final = (
    _NOW
    + """
local ttl, cap = tonumber(ARGV[1]), ARGV[2]
local function apply(online, holders, client, server, sent)
  if sent == 0 or sent > now then sent = now end
  local deadline = sent + ttl
  if deadline <= now then return -1 end
  local held = tonumber(redis.call('ZSCORE', holders, server) or '0')
  if held < 0 and sent <= -held then return -1 end
  redis.call('ZADD', holders, 'GT', deadline, server)
  -- Every entry's deadline, and any leave worth remembering, ends within a
  -- TTL of now: one PEXPIRE covers them all.
  redis.call('PEXPIRE', holders, ttl)
  local announced = redis.call('ZSCORE', KEYS[1], client)
  if announced and tonumber(announced) > deadline and redis.call('EXISTS', online) == 1 then
    return 0  -- a newer heartbeat was applied first: never move a deadline back
  end
  local old = redis.call('SET', online, server, 'PX', deadline - now, 'GET')
  redis.call('ZADD', KEYS[1], deadline, client)
  if announced then
    -- Still announced, so a refresh: also when the key expired before its
    -- OFFLINE went out (Redis was unreachable, or the sweeper is behind).
    if old ~= server then redis.call('HSET', KEYS[2], client, server) end
    return 0
  end
  redis.call('HSET', KEYS[2], client, server)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', cap, '*', 'client', client,
    'status', 'ONLINE', 'server', server)
  return 1
end
local results, acks, failure = {}, {}, nil
for line in string.gmatch(ARGV[5], '[^\\n]+') do
  local client, server, sent, ms = string.match(line, '^(%S+) (%S+) ((%d+)%-?%d*)$')
  local ok, result = false, 'malformed heartbeat ' .. line
  if client then
    ok, result = pcall(apply, ARGV[3] .. client, ARGV[4] .. client, client, server,
      tonumber(ms))
    if ok and string.find(sent, '^%d+%-%d+$') then acks[#acks + 1] = sent end
  end
  if ok then
    results[#results + 1] = result
  else
    results[#results + 1], failure = -2, result
  end
end
-- In slices: unpack's stack is limited.
for i = 1, #acks, 1000 do
  redis.call('XACK', KEYS[4], ARGV[6], unpack(acks, i, math.min(i + 999, #acks)))
end
if failure then
  results[#results + 1] = type(failure) == 'table' and failure.err or tostring(failure)
end
return results
"""
)

# OFFLINE checks for any number of clients in one call.
# KEYS[1] online.deadlines  KEYS[2] online.servers  KEYS[3] presence stream
# ARGV[1] presence stream cap  ARGV[2] online.clients. prefix  ARGV[3...] clients
# A client gets its OFFLINE when its key is gone and its OFFLINE is not out yet.
# Returns {how many were published, how many Redis failed, the last failure or ''}.
OFFLINE: Final = """
local published, failed, failure = 0, 0, ''
local function check(client)
  if redis.call('EXISTS', ARGV[2] .. client) == 1 then return 0 end
  if not redis.call('ZSCORE', KEYS[1], client) then return 0 end
  local server = redis.call('HGET', KEYS[2], client) or ''
  redis.call('ZREM', KEYS[1], client)
  redis.call('HDEL', KEYS[2], client)
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[1], '*', 'client', client,
    'status', 'OFFLINE', 'server', server)
  return 1
end
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
