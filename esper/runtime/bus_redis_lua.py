"""The Lua scripts of the Redis Streams Oona backend: each bus operation runs as one atomic script on the server.

Every script starts with the shared prologue, which reads a fixed argument header (prefix, dead-letter topic, the
caller's clock reading and the limits) and defines the helpers. Keys are derived from the prefix inside the scripts,
so they suit a standalone Redis server (on a cluster, every key would need the same hash tag in the prefix).

Keys, for prefix P, topic T, group G and consumer C:
    P:T                   the stream; entry fields t (message type), p (priority), at (published_at_s as the
                          caller's clock printed it), b (msgpack payload); dead letters add e (reason), dt, dg, dm, da
                          (origin topic, group, message id, attempts)
    P:T:groups            set of the topic's group names
    P:T:stats             hash of counters, plus the shedding flag
    P:T:origins           hash origin -> id of that origin's undelivered emergency signal (coalescing target)
    P:T:over              hash b:<id>, p:<id>, l:<id>, o:<id>: the coalesced payload, priority, level and origin
    P:T:g:G:idle          sorted set id -> claim-at time (last delivery + claim_idle_s, on the caller's clock)
    P:T:g:G:err           hash id -> last handler error
    P:T:g:G:done          set of retained ids this group acked or dead-lettered (an entry is deleted once every
                          group has it here)
    P:T:g:G:claimed:C     list of ids claimed for C in a batch but not yet handed to it
    P:bucket              hash tokens, at: the emergency lane's token bucket

Attempts are Redis delivery counts: XREADGROUP counts the first delivery, XCLAIM (without JUSTID) each hand-out of a
claimed message; batch members are moved with XCLAIM JUSTID, which does not count, until they are handed out.
Idleness is not Redis's idle time (wall clock) but the claim-at scores above, so an injected clock drives claims.
"""

from __future__ import annotations

from esper.runtime.bus_redis_prologue import PROLOGUE

PUBLISH = (
    PROLOGUE
    + r"""
-- ARGV[13] topic, [14] message type, [15] priority, [16] payload, [17] droppable 0/1,
-- [18] origin of an emergency signal ('' otherwise), [19] its level, [20] emergency topic 0/1
local t = ARGV[13]
local S = skey(t)
local droppable = ARGV[17] == '1'
local origin = ARGV[18]
local emergency = ARGV[20] == '1'
local function result(status, id) return {status, id or false, {stats(t)}} end

local B = P .. ':bucket'
local tokens = 0
local over_rate = false
if emergency then
  local raw = redis.call('HMGET', B, 'tokens', 'at')
  -- Held within [0, RATE], where publishing keeps it: a stored -1e300 would close the lane for good.
  tokens = math.max(0, math.min(RATE, num(raw[1]) or RATE))
  local at = num(raw[2]) or NOW
  tokens = math.max(0, math.min(RATE, tokens + (NOW - at) * RATE / 60.0))
  redis.call('HSET', B, 'tokens', tokens, 'at', NOW_S)
  over_rate = tokens < 1.0
end

if over_rate and origin ~= '' then
  local current = redis.call('HGET', S .. ':origins', origin)
  local entry = {}
  if current then
    local found = redis.pcall('XRANGE', S, current, current)  -- pcall: the stored id may be no stream id
    if not found.err then entry = found end
  end
  if #entry > 0 then
    incr(t, 'emergency_rate_dropped', 1)
    local over = S .. ':over'
    local held_level = num(redis.call('HGET', over, 'l:' .. current)) or 0
    if tonumber(ARGV[19]) > held_level then
      local held_priority = num(redis.call('HGET', over, 'p:' .. current)) or num(fields_of(entry[1][2])['p']) or 0
      redis.call('HSET', over, 'b:' .. current, ARGV[16], 'l:' .. current, ARGV[19],
        'p:' .. current, math.max(held_priority, tonumber(ARGV[15])))
    end
    return result('coalesced', current)
  end
  -- The first signal of an origin past the rate still goes through: signals never drop, and coalescing bounds
  -- each origin to one undelivered signal while the lane is over its rate.
elseif over_rate and droppable then
  incr(t, 'emergency_rate_dropped', 1)
  return result('dropped', nil)
end

if droppable then
  local load = math.max(depth(t), pending_total(t))
  local shedding = redis.call('HGET', S .. ':stats', 'shedding') == '1'
  if shedding and load <= DEPTH_RECOVERY then
    shedding = false
  elseif (not shedding) and load >= DEPTH_HIGH then
    shedding = true
  end
  redis.call('HSET', S .. ':stats', 'shedding', shedding and 1 or 0)
  if shedding or depth(t) >= CAPACITY then
    incr(t, 'publish_dropped', 1)
    return result('dropped', nil)
  end
end
if depth(t) >= CAPACITY then return result('wait', nil) end
if emergency and not over_rate then redis.call('HSET', B, 'tokens', tokens - 1.0) end
local id = redis.call('XADD', S, 'MAXLEN', '~', CAPACITY, '*', 't', ARGV[14], 'p', ARGV[15], 'at', NOW_S,
  'b', ARGV[16])
incr(t, 'published', 1)
if origin ~= '' then
  redis.call('HSET', S .. ':origins', origin, id)
  redis.call('HSET', S .. ':over', 'l:' .. id, ARGV[19], 'o:' .. id, origin)
end
return result('published', id)
"""
)

TAKE = (
    PROLOGUE
    + r"""
-- ARGV[13] group, [14] consumer, [15..] topics in drain order
local g, c = ARGV[13], ARGV[14]
local topics = {}
for i = 15, #ARGV do table.insert(topics, ARGV[i]) end

local function hand_out(t, id, f, attempts)
  local S = skey(t)
  redis.call('ZADD', gkey(t, g, 'idle'), NOW + CLAIM_IDLE, id)
  local origin = redis.call('HGET', S .. ':over', 'o:' .. id)
  -- A delivered signal no longer absorbs later ones.
  if origin and redis.call('HGET', S .. ':origins', origin) == id then redis.call('HDEL', S .. ':origins', origin) end
  incr(t, 'delivered', 1)
  local b, p = effective(t, id, f)
  local err = redis.call('HGET', gkey(t, g, 'err'), id) or f['e'] or false
  return {t, id, f['t'], p, f['at'], b, attempts, err, f['dt'] or false, f['dg'] or false, f['dm'] or false,
    f['da'] or false}
end

local function claim_next(t)
  local S = skey(t)
  local L = gkey(t, g, 'claimed:' .. c)
  while true do
    local id = redis.call('LPOP', L)
    if not id then break end
    local _, owner = pending_of(t, g, id)
    if owner == c then
      local got = redis.call('XCLAIM', S, g, c, 0, id)
      if got[1] and got[1][2] then return id, got[1][2] end
    end
  end
  local Z = gkey(t, g, 'idle')
  local first = nil
  for _, id in ipairs(redis.call('ZRANGEBYSCORE', Z, '-inf', NOW_S, 'LIMIT', 0, CLAIM_BATCH)) do
    local count = pending_of(t, g, id)
    if not count then
      redis.call('ZREM', Z, id)
    elseif count >= MAX_ATTEMPTS then
      local err = redis.call('HGET', gkey(t, g, 'err'), id)
      dead_letter(t, g, id, count, err or ('not acked after ' .. count .. ' deliveries'))
    elseif first == nil then
      first = id
    else
      redis.call('XCLAIM', S, g, c, 0, id, 'JUSTID')
      redis.call('ZADD', Z, NOW + CLAIM_IDLE, id)
      redis.call('RPUSH', L, id)
    end
  end
  if first then
    local got = redis.call('XCLAIM', S, g, c, 0, first)
    if got[1] and got[1][2] then return first, got[1][2] end
  end
  return nil, nil
end

local function take_one(t)
  while true do
    local id, flat = claim_next(t)
    if not id then
      local r = redis.call('XREADGROUP', 'GROUP', g, c, 'COUNT', 1, 'STREAMS', skey(t), '>')
      if r and r[1] and #r[1][2] > 0 then
        id = r[1][2][1][1]
        flat = r[1][2][1][2]
      end
    end
    if not id then return nil end
    local f = fields_of(flat)
    local count = pending_of(t, g, id)
    if not intact(f) then
      dead_letter(t, g, id, count - 1, 'malformed: not an entry this bus wrote')
    elseif NOW - num(f['at']) > TTL then
      -- Read anyway after its TTL: dead-lettered unprocessed; this read was no delivery.
      dead_letter(t, g, id, count - 1, EXPIRED_REASON)
    else
      return hand_out(t, id, f, count)
    end
  end
end

for _, t in ipairs(topics) do ensure_group(t, g) end
local delivery = false
for _, t in ipairs(topics) do
  local d = take_one(t)
  if d then
    delivery = d
    break
  end
end
local next_at = false
if not delivery then
  for _, t in ipairs(topics) do
    local first = redis.call('ZRANGE', gkey(t, g, 'idle'), 0, 0, 'WITHSCORES')
    if #first > 0 and (not next_at or tonumber(first[2]) < tonumber(next_at)) then next_at = first[2] end
  end
end
return {delivery, stats_of(topics), next_at, BURIED}
"""
)

ACK = (
    PROLOGUE
    + r"""
-- ARGV[13] topic, [14] group, [15] message id
local t, g, id = ARGV[13], ARGV[14], ARGV[15]
if redis.call('SISMEMBER', skey(t) .. ':groups', g) == 0 or redis.call('XACK', skey(t), g, id) == 0 then
  return {0, {stats(t)}}
end
incr(t, 'acked', 1)
redis.call('ZREM', gkey(t, g, 'idle'), id)
redis.call('HDEL', gkey(t, g, 'err'), id)
done(t, g, id)
return {1, {stats(t)}}
"""
)

NACK = (
    PROLOGUE
    + r"""
-- ARGV[13] topic, [14] group, [15] message id, [16] error
local t, g, id, err = ARGV[13], ARGV[14], ARGV[15], ARGV[16]
local count = nil
if redis.call('SISMEMBER', skey(t) .. ':groups', g) == 1 then count = pending_of(t, g, id) end
if count then
  redis.call('HSET', gkey(t, g, 'err'), id, err)
  if count >= MAX_ATTEMPTS then dead_letter(t, g, id, count, err) end
end
return {BURIED, stats_of({t})}
"""
)

SUBSCRIBE = (
    PROLOGUE
    + r"""
-- ARGV[13] group, [14..] topics
local topics = {}
for i = 14, #ARGV do
  table.insert(topics, ARGV[i])
  ensure_group(ARGV[i], ARGV[13])
end
return stats_of(topics)
"""
)

BACKLOG = (
    PROLOGUE
    + r"""
-- ARGV[13] topic, [14] group
local t, g = ARGV[13], ARGV[14]
if redis.call('SISMEMBER', skey(t) .. ':groups', g) == 0 then return depth(t) end
return depth(t) - redis.call('SCARD', gkey(t, g, 'done'))
"""
)

TRIM = (
    PROLOGUE
    + r"""
-- ARGV[13..] topics
local topics = {}
local total = 0
for i = 13, #ARGV do
  local t = ARGV[i]
  table.insert(topics, t)
  local S = skey(t)
  local expired, keep, cursor = {}, nil, '-'
  while not keep do
    local batch = redis.call('XRANGE', S, cursor, '+', 'COUNT', 64)
    if #batch == 0 then break end
    for _, e in ipairs(batch) do
      local at = num(fields_of(e[2])['at'])
      if at == nil or NOW - at > TTL then  -- an entry without a time (another writer's) is trimmed too
        table.insert(expired, e[1])
      else
        keep = e[1]
        break
      end
    end
    cursor = '(' .. batch[#batch][1]
  end
  if #expired > 0 then
    for _, id in ipairs(expired) do forget(t, id) end
    if keep then redis.call('XTRIM', S, 'MINID', keep) else redis.call('XTRIM', S, 'MAXLEN', 0) end
    incr(t, 'expired_trimmed', #expired)
    total = total + #expired
  end
end
return {total, stats_of(topics)}
"""
)

STATS = (
    PROLOGUE
    + r"""
-- ARGV[13..] topics
local topics = {}
for i = 13, #ARGV do table.insert(topics, ARGV[i]) end
return stats_of(topics)
"""
)
