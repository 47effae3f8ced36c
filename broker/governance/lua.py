"""The Lua scripts behind :mod:`broker.governance.redis_state`: each
read-modify-write on the shared store is one script, so it is atomic across
brokers. Times are the store's own clock (``TIME``), in milliseconds."""

_NOW = "local t = redis.call('TIME') local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)\n"

CHARGE = (
    _NOW
    + """
if ARGV[#ARGV] ~= '' and redis.call('GET', ARGV[#ARGV - 1]) ~= ARGV[#ARGV] then return {3, 0, 0} end
local n = #KEYS / 2
for i = 1, n do
  local b = 1 + (i - 1) * 3
  local rn, win, mu = tonumber(ARGV[b + 1]), tonumber(ARGV[b + 2]), tonumber(ARGV[b + 3])
  if rn > 0 then
    redis.call('ZREMRANGEBYSCORE', KEYS[2 * i - 1], '-inf', now - win)
    local card = redis.call('ZCARD', KEYS[2 * i - 1])
    if card >= rn then
      local e = redis.call('ZRANGE', KEYS[2 * i - 1], card - rn, card - rn, 'WITHSCORES')
      return {1, i, tonumber(e[2]) + win - now}
    end
  end
  if mu > 0 and tonumber(redis.call('GET', KEYS[2 * i]) or '0') >= mu then
    return {2, i, 0}
  end
end
for i = 1, n do
  local b = 1 + (i - 1) * 3
  if tonumber(ARGV[b + 1]) > 0 then
    redis.call('ZADD', KEYS[2 * i - 1], now, ARGV[1])
    redis.call('PEXPIRE', KEYS[2 * i - 1], ARGV[b + 2])
  end
  if tonumber(ARGV[b + 3]) > 0 then redis.call('INCR', KEYS[2 * i]) end
end
return {0, 0, 0}
"""
)

OPEN = (
    _NOW
    + """
if KEYS[2] ~= '' then
  local known = redis.call('GET', KEYS[2])
  if known and redis.call('HGET', ARGV[1] .. known, 'state') == 'pending' then return known end
end
local limit = tonumber(ARGV[5])
if limit > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  for _, id in ipairs(redis.call('ZRANGE', KEYS[3], 0, -1)) do
    if redis.call('HGET', ARGV[1] .. id, 'state') ~= 'pending' then redis.call('ZREM', KEYS[3], id) end
  end
  if redis.call('ZCARD', KEYS[3]) >= limit then return false end
end
local key = ARGV[1] .. ARGV[2]
redis.call('HSET', key, 'id', ARGV[2], 'state', 'pending', unpack(ARGV, 6))
redis.call('PEXPIRE', key, ARGV[3])
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[4]), ARGV[2])
if KEYS[2] ~= '' then redis.call('SET', KEYS[2], ARGV[2], 'PX', ARGV[4]) end
if limit > 0 then
  redis.call('ZADD', KEYS[3], now + tonumber(ARGV[4]), ARGV[2])
  redis.call('PEXPIRE', KEYS[3], ARGV[4])
end
return ARGV[2]
"""
)

PENDING = (
    _NOW
    + """
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
return redis.call('ZRANGE', KEYS[1], 0, -1)
"""
)

DECIDE = """
if redis.call('HGET', KEYS[1], 'state') ~= 'pending' then return false end
redis.call('HSET', KEYS[1], 'state', ARGV[1], 'by', ARGV[2])
redis.call('ZREM', KEYS[2], ARGV[4])
if ARGV[1] == 'approved' and tonumber(ARGV[3]) > 0 then
  for i = 5, #ARGV do redis.call('SET', ARGV[i], '1', 'PX', ARGV[3]) end
end
return redis.call('HGETALL', KEYS[1])
"""

EXPIRE = """
if KEYS[3] ~= '' and redis.call('GET', KEYS[3]) == ARGV[1] then redis.call('DEL', KEYS[3]) end
redis.call('ZREM', KEYS[2], ARGV[1])
if redis.call('HGET', KEYS[1], 'state') == 'pending' then redis.call('HSET', KEYS[1], 'state', 'expired') end
return redis.call('HGETALL', KEYS[1])
"""


USAGE = (
    _NOW
    + """
local out = {}
for i = 1, #KEYS / 2 do
  local win = tonumber(ARGV[i])
  local recent = 0
  if win > 0 then recent = redis.call('ZCOUNT', KEYS[2 * i - 1], '(' .. (now - win), '+inf') end
  out[#out + 1] = recent
  out[#out + 1] = tonumber(redis.call('GET', KEYS[2 * i]) or '0')
end
return out
"""
)
