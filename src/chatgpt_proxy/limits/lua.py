"""The Redis side of the limits: three Lua scripts, each run atomically by the server.

One script admits (every check and every reservation of one request in one round trip), one
settles and releases, one seeds a budget counter from the key store. The rules are those of
``limits.policy``; time is Redis's own clock (``TIME``), so replicas whose clocks disagree still
share one window. Keys of one client key share a ``{key_id}`` hash tag::

    PREFIX{key_id}:w          zset   request id -> admitted at (ms): the 60 s window
    PREFIX{key_id}:wt         hash   request id -> tokens, and "~sum" of them
    PREFIX{key_id}:c          zset   request id -> lease end (ms): requests in flight
    PREFIX{key_id}:b:EPOCH    hash   tokens, cost: spent in total (+ reserved)
    PREFIX{key_id}:d:EPOCH:DAY hash  tokens, cost: spent that UTC day (+ reserved)

Arguments travel as few space-separated strings (the client's cost is per argument): admit
takes the request id, ``"estimate cost"`` and ``"rpm tpm concurrency daily_tokens
total_tokens daily_cost total_cost window_ms lease_ms total_ttl_ms daily_ttl_ms"``; settle
takes one ``"id flags used_tokens token_delta cost_delta"`` per request it settles (several
requests of one key, settled at once, share one call). A limit of -1 means none. The admit
script answers ``"code detail requests_in_window tokens_in_window reset_ms"``: code 0
admitted, -1 a budget counter must be seeded first (detail: 1 total, 2 daily, 3 both), else
the index of the reason in ``REASONS`` + 1 with detail = milliseconds until a retry may pass.
"""

from __future__ import annotations

from chatgpt_proxy.limits.policy import (
    OVER_CONCURRENCY,
    OVER_DAILY_COST,
    OVER_DAILY_TOKENS,
    OVER_RPM,
    OVER_TOTAL_COST,
    OVER_TOTAL_TOKENS,
    OVER_TPM,
    TOO_LARGE,
)

REASONS = (
    OVER_DAILY_TOKENS,
    OVER_TOTAL_TOKENS,
    OVER_DAILY_COST,
    OVER_TOTAL_COST,
    OVER_RPM,
    OVER_TPM,
    TOO_LARGE,
    OVER_CONCURRENCY,
)

_FIELDS = """
local function fields(text)
  local out = {}
  for value in string.gmatch(text, '%S+') do out[#out + 1] = value end
  return out
end
"""

ADMIT = (
    _FIELDS
    + """
local window, weights, slots, total, daily = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local id, req, lim = ARGV[1], fields(ARGV[2]), fields(ARGV[3])
local est, est_cost = tonumber(req[1]), req[2]
local rpm, tpm, max_slots = tonumber(lim[1]), tonumber(lim[2]), tonumber(lim[3])
local daily_tokens, total_tokens = tonumber(lim[4]), tonumber(lim[5])
local daily_cost, total_cost = tonumber(lim[6]), tonumber(lim[7])
local window_ms, lease_ms = tonumber(lim[8]), tonumber(lim[9])
local total_ttl, daily_ttl = tonumber(lim[10]), tonumber(lim[11])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- One string, not an array: the client reads one line instead of six.
local function answer(code, wait, count, used, reset)
  local fields = {code, math.max(0, math.ceil(wait)), count, used, math.max(0, math.ceil(reset))}
  return table.concat(fields, ' ')
end
local has_total = total_tokens >= 0 or total_cost >= 0
local has_daily = daily_tokens >= 0 or daily_cost >= 0
local missing = 0
if has_total and redis.call('EXISTS', total) == 0 then missing = missing + 1 end
if has_daily and redis.call('EXISTS', daily) == 0 then missing = missing + 2 end
if missing > 0 then return answer(-1, missing, 0, 0, 0) end

local function spent(key, field)
  return tonumber(redis.call('HGET', key, field) or '0') or 0
end
local function over(limit, key, field) return limit >= 0 and spent(key, field) >= limit end
if over(daily_tokens, daily, 'tokens') then return answer(1, 0, 0, 0, 0) end
if over(total_tokens, total, 'tokens') then return answer(2, 0, 0, 0, 0) end
if over(daily_cost, daily, 'cost') then return answer(3, 0, 0, 0, 0) end
if over(total_cost, total, 'cost') then return answer(4, 0, 0, 0, 0) end

local windowed = rpm >= 0 or tpm >= 0
local count, used = 0, 0
local function expiry(rank)
  local e = redis.call('ZRANGE', window, rank, rank, 'WITHSCORES')
  if #e == 0 then return 0 end
  return tonumber(e[2]) + window_ms - now
end
if windowed then
  local cutoff = now - window_ms
  local old = redis.call('ZRANGEBYSCORE', window, '-inf', cutoff)
  if #old > 0 then
    local freed = 0
    for i = 1, #old, 500 do
      local chunk = {}
      for j = i, math.min(i + 499, #old) do chunk[#chunk + 1] = old[j] end
      for _, w in ipairs(redis.call('HMGET', weights, unpack(chunk))) do
        freed = freed + (tonumber(w) or 0)
      end
      redis.call('HDEL', weights, unpack(chunk))
    end
    redis.call('ZREMRANGEBYSCORE', window, '-inf', cutoff)
    redis.call('HINCRBY', weights, '~sum', -freed)
  end
  count = redis.call('ZCARD', window)
  used = spent(weights, '~sum')
  if rpm >= 0 and count >= rpm then
    return answer(5, expiry(count - rpm), count, used, expiry(0))
  end
  if tpm >= 0 and est > tpm then return answer(7, 0, count, used, expiry(0)) end
  if tpm >= 0 and used + est > tpm then
    local need, freed, start, wait = used + est - tpm, 0, 0, window_ms
    while start < count and freed < need do
      local e = redis.call('ZRANGE', window, start, start + 99, 'WITHSCORES')
      if #e == 0 then break end
      local ids = {}
      for j = 1, #e, 2 do ids[#ids + 1] = e[j] end
      local ws = redis.call('HMGET', weights, unpack(ids))
      for j = 1, #ids do
        freed = freed + (tonumber(ws[j]) or 0)
        if freed >= need then wait = tonumber(e[2 * j]) + window_ms - now; break end
      end
      start = start + 100
    end
    return answer(6, wait, count, used, expiry(0))
  end
end
if max_slots >= 0 then
  redis.call('ZREMRANGEBYSCORE', slots, '-inf', now)
  if redis.call('ZCARD', slots) >= max_slots then
    return answer(8, 1000, count, used, expiry(0))
  end
  redis.call('ZADD', slots, now + lease_ms, id)
  redis.call('PEXPIRE', slots, lease_ms)
end
if windowed then
  redis.call('ZADD', window, now, id)
  redis.call('HSET', weights, id, est)
  redis.call('HINCRBY', weights, '~sum', est)
  redis.call('PEXPIRE', window, window_ms * 2)
  redis.call('PEXPIRE', weights, window_ms * 2)
  count, used = count + 1, used + est
end
if has_total then
  redis.call('HINCRBY', total, 'tokens', est)
  redis.call('HINCRBYFLOAT', total, 'cost', est_cost)
  redis.call('PEXPIRE', total, total_ttl)
end
if has_daily then
  redis.call('HINCRBY', daily, 'tokens', est)
  redis.call('HINCRBYFLOAT', daily, 'cost', est_cost)
  redis.call('PEXPIRE', daily, daily_ttl)
end
return answer(0, 0, count, used, expiry(0))
"""
)

# Flags: 1 window, 2 slot, 4 total, 8 daily. A counter that has gone (expired, Redis
# restarted) is left to be seeded afresh: HINCRBY would create it holding this delta alone.
SETTLE = (
    _FIELDS
    + """
local window, weights, slots, total, daily = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
for n = 1, #ARGV do
  local a = fields(ARGV[n])
  local id, flags, used, delta, cost_delta = a[1], tonumber(a[2]), a[3], a[4], a[5]
  if flags % 2 == 1 then
    local old = redis.call('HGET', weights, id)
    if old then
      redis.call('HSET', weights, id, used)
      redis.call('HINCRBY', weights, '~sum', tonumber(used) - tonumber(old))
    end
  end
  if math.floor(flags / 2) % 2 == 1 then redis.call('ZREM', slots, id) end
  if math.floor(flags / 4) % 2 == 1 and redis.call('EXISTS', total) == 1 then
    redis.call('HINCRBY', total, 'tokens', delta)
    redis.call('HINCRBYFLOAT', total, 'cost', cost_delta)
  end
  if math.floor(flags / 8) % 2 == 1 and redis.call('EXISTS', daily) == 1 then
    redis.call('HINCRBY', daily, 'tokens', delta)
    redis.call('HINCRBYFLOAT', daily, 'cost', cost_delta)
  end
end
return 1
"""
)

# KEYS[1] a budget hash; ARGV: tokens, cost, ttl ms. Only the first seeder of a counter wins.
SEED = """
if redis.call('EXISTS', KEYS[1]) == 0 then
  redis.call('HSET', KEYS[1], 'tokens', ARGV[1], 'cost', ARGV[2])
  redis.call('PEXPIRE', KEYS[1], ARGV[3])
end
return 1
"""
