"""The shared prologue of the Redis bus's Lua scripts: the argument header and the helpers every script calls."""

from __future__ import annotations

# ARGV[1..12] is the header every script shares; script-specific arguments start at ARGV[13].
PROLOGUE = r"""
local P = ARGV[1]
local DL = ARGV[2]
local NOW_S = ARGV[3]
local NOW = tonumber(NOW_S)
local DEPTH_HIGH = tonumber(ARGV[4])
local DEPTH_RECOVERY = tonumber(ARGV[5])
local CAPACITY = tonumber(ARGV[6])
local RATE = tonumber(ARGV[7])
local CLAIM_IDLE = tonumber(ARGV[8])
local CLAIM_BATCH = tonumber(ARGV[9])
local MAX_ATTEMPTS = tonumber(ARGV[10])
local TTL = tonumber(ARGV[11])
local EXPIRED_REASON = ARGV[12]
local BURIED = 0
local REPAIRED = {}

local function skey(t) return P .. ':' .. t end
local function gkey(t, g, what) return P .. ':' .. t .. ':g:' .. g .. ':' .. what end
-- Any process that can write to the server can store anything in these keys: a stored number is read with these,
-- never with a bare tonumber(), whose nil ended a reply early (a Lua array stops at its first nil).
local function num(v)
  local x = tonumber(v)
  if x == nil or x ~= x or x == math.huge or x == -math.huge then return nil end
  return x
end
local function count_of(v)
  if type(v) == 'string' and #v <= 15 and string.match(v, '^%d+$') then return tonumber(v) end
  return nil
end
-- A counter that is not a count is set to 0 and reported in its topic's statistics row, once.
local function repair(t, name)
  redis.call('HSET', skey(t) .. ':stats', name, 0)
  REPAIRED[t] = (REPAIRED[t] or 0) + 1
end
local function incr(t, name, n)
  local held = redis.call('HGET', skey(t) .. ':stats', name)
  if held and count_of(held) == nil then repair(t, name) end
  redis.call('HINCRBY', skey(t) .. ':stats', name, n)
end
local function fields_of(flat)
  local f = {}
  for i = 1, #flat, 2 do f[flat[i]] = flat[i + 1] end
  return f
end
local function groups_of(t) return redis.call('SMEMBERS', skey(t) .. ':groups') end
local function depth(t) return redis.call('XLEN', skey(t)) end

local function ensure_group(t, g)
  if redis.call('SADD', skey(t) .. ':groups', g) == 1 then
    -- pcall: a group left on the stream by an earlier bus with this prefix answers BUSYGROUP; it is kept as is.
    redis.pcall('XGROUP', 'CREATE', skey(t), g, '0', 'MKSTREAM')
  end
end

local function group_info(t)
  local out = {}
  if redis.call('EXISTS', skey(t)) == 0 then return out end
  for _, raw in ipairs(redis.call('XINFO', 'GROUPS', skey(t))) do table.insert(out, fields_of(raw)) end
  return out
end

local function pending_total(t)
  local n = 0
  for _, info in ipairs(group_info(t)) do n = n + info['pending'] end
  return n
end

local function stats(t)
  local info = group_info(t)
  local pending = 0
  for _, g in ipairs(info) do pending = pending + g['pending'] end
  local c = fields_of(redis.call('HGETALL', skey(t) .. ':stats'))
  local row = {t, depth(t), pending, redis.call('SCARD', skey(t) .. ':groups')}
  for _, name in ipairs({'shedding', 'published', 'delivered', 'acked', 'publish_dropped', 'dead_letter_total',
      'emergency_rate_dropped', 'expired_trimmed'}) do
    local value = 0
    if c[name] ~= nil then
      value = count_of(c[name])
      if value == nil then
        repair(t, name)
        value = 0
      end
    end
    table.insert(row, value)
  end
  table.insert(row, REPAIRED[t] or 0)
  REPAIRED[t] = 0
  return row
end

local function stats_of(topics)
  local out, seen = {}, {}
  for _, t in ipairs(topics) do
    if not seen[t] then seen[t] = true; table.insert(out, stats(t)) end
  end
  if not seen[DL] then table.insert(out, stats(DL)) end
  return out
end

local function pending_of(t, g, id)
  -- pcall: an id stored by someone else (in the idle set or a claimed list) may not be a stream id at all.
  local r = redis.pcall('XPENDING', skey(t), g, id, id, 1)
  if r.err or #r == 0 then return nil, nil end
  return r[1][4], r[1][2]
end

-- Everything kept about an entry except the entry itself.
local function forget(t, id)
  local S = skey(t)
  for _, g in ipairs(groups_of(t)) do
    redis.call('XACK', S, g, id)
    redis.call('ZREM', gkey(t, g, 'idle'), id)
    redis.call('HDEL', gkey(t, g, 'err'), id)
    redis.call('SREM', gkey(t, g, 'done'), id)
  end
  local origin = redis.call('HGET', S .. ':over', 'o:' .. id)
  if origin and redis.call('HGET', S .. ':origins', origin) == id then redis.call('HDEL', S .. ':origins', origin) end
  redis.call('HDEL', S .. ':over', 'b:' .. id, 'p:' .. id, 'l:' .. id, 'o:' .. id)
end

local function remove(t, id)
  forget(t, id)
  redis.call('XDEL', skey(t), id)
end

local function done(t, g, id)
  redis.call('SADD', gkey(t, g, 'done'), id)
  for _, other in ipairs(groups_of(t)) do
    if redis.call('SISMEMBER', gkey(t, other, 'done'), id) == 0 then return end
  end
  remove(t, id)
end

-- An entry as publish writes it; anything else on the stream (another writer's) is dead-lettered unread.
local function intact(f)
  return f['b'] ~= nil and num(f['t']) ~= nil and num(f['p']) ~= nil and num(f['at']) ~= nil
end

local function effective(t, id, f)
  local over = skey(t) .. ':over'
  return redis.call('HGET', over, 'b:' .. id) or f['b'], redis.call('HGET', over, 'p:' .. id) or f['p']
end

local function bury(t, g, id, f, attempts, reason)
  local D = skey(DL)
  if depth(DL) >= CAPACITY then
    -- Dead letters never wait: the oldest one makes room.
    local oldest = redis.call('XRANGE', D, '-', '+', 'COUNT', 1)
    if #oldest > 0 then
      remove(DL, oldest[1][1])
      incr(DL, 'publish_dropped', 1)
    end
  end
  local b, p = effective(t, id, f)
  redis.call('XADD', D, 'MAXLEN', '~', CAPACITY, '*', 't', f['t'], 'p', p, 'at', NOW_S, 'b', b, 'e', reason,
    'dt', t, 'dg', g, 'dm', id, 'da', attempts)
  incr(DL, 'published', 1)
end

local function dead_letter(t, g, id, attempts, reason)
  local entries = redis.call('XRANGE', skey(t), id, id)
  redis.call('XACK', skey(t), g, id)
  redis.call('ZREM', gkey(t, g, 'idle'), id)
  redis.call('HDEL', gkey(t, g, 'err'), id)
  incr(t, 'dead_letter_total', 1)
  BURIED = BURIED + 1
  -- Dead letters of the dead-letter topic are only counted, never re-published.
  if #entries > 0 and t ~= DL and intact(fields_of(entries[1][2])) then
    bury(t, g, id, fields_of(entries[1][2]), attempts, reason)
  end
  done(t, g, id)
end
"""
