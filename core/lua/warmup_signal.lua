-- Record one SMTP outcome of a warming IP for one provider and watch its rates over the last
-- hour (twelve 5-minute buckets). Hold the warmup when a rate is over its threshold with 95%
-- confidence (the Wilson lower bound: 2 deferrals in 13 attempts is noise, 6 in 12 is not);
-- let it go once it has been held an hour and the last hour's rates are all under half their
-- thresholds and, with 95% confidence, under twice them (a held IP sends little).
-- KEYS[1] signals hash of this ip:provider   KEYS[2] holds hash (field ip:provider)
-- KEYS[3] events stream  KEYS[4] daily history hash of this ip:provider (field day:outcome)
-- KEYS[5] last-send hash (field ip)  ARGV[11] the ip
-- ARGV[1] ip:provider  ARGV[2] now  ARGV[3] outcome: sent | deferred | bounced | complained
-- ARGV[4] threshold deferred  ARGV[5] threshold bounced  ARGV[6] threshold complained
-- ARGV[7] minimum attempts in the hour before rates count  ARGV[8] events MAXLEN
-- ARGV[9] event template (msgpack map without type/timestamp/rates; Lua adds them)
-- ARGV[10] UTC day (YYYYMMDD) for the daily history
-- Returns "paused", "resumed" or "".
local now = tonumber(ARGV[2])
local bucket = math.floor(now / 300)
redis.call('HINCRBY', KEYS[1], bucket .. ':' .. ARGV[3], 1)
redis.call('EXPIRE', KEYS[1], 7200)
redis.call('HINCRBY', KEYS[4], ARGV[10] .. ':' .. ARGV[3], 1)
redis.call('EXPIRE', KEYS[4], 120 * 86400)
if ARGV[3] == 'sent' then redis.call('HSET', KEYS[5], ARGV[11], now) end
local counts = {sent = 0, deferred = 0, bounced = 0, complained = 0}
local all = redis.call('HGETALL', KEYS[1])
for i = 1, #all, 2 do
  local b, kind = string.match(all[i], '^(%d+):(%a+)$')
  b = tonumber(b)
  if b and b > bucket - 12 then
    counts[kind] = (counts[kind] or 0) + tonumber(all[i + 1])
  elseif b then
    redis.call('HDEL', KEYS[1], all[i])
  end
end
local attempts = counts.sent + counts.deferred + counts.bounced
local rates = {deferred = 0, bounced = 0, complained = 0}
if attempts > 0 then
  rates.deferred = counts.deferred / attempts
  rates.bounced = counts.bounced / attempts
  rates.complained = counts.complained / math.max(counts.sent, 1)
end
local limits = {deferred = tonumber(ARGV[4]), bounced = tonumber(ARGV[5]),
                complained = tonumber(ARGV[6])}
local function wilson(k, n, sign)
  if n == 0 then return sign < 0 and 0 or 1 end
  local z, p = 1.96, k / n
  local centre = p + z * z / (2 * n)
  local spread = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
  return (centre + sign * spread) / (1 + z * z / n)
end
local function lower_bound(k, n) return wilson(k, n, -1) end
local function upper_bound(k, n) return wilson(k, n, 1) end
local bounds = {
  deferred = lower_bound(counts.deferred, attempts),
  bounced = lower_bound(counts.bounced, attempts),
  complained = lower_bound(counts.complained, math.max(counts.sent, 1)),
}
local held = redis.call('HGET', KEYS[2], ARGV[1])
local state = held and cmsgpack.unpack(held) or nil

local function event(kind, reason)
  local e = cmsgpack.unpack(ARGV[9])
  e['type'] = kind
  e['timestamp'] = now
  e['reason'] = reason
  e['attempts_last_hour'] = attempts
  e['deferral_rate'] = rates.deferred
  e['bounce_rate'] = rates.bounced
  e['complaint_rate'] = rates.complained
  redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[8], '*', 'e', cmsgpack.pack(e))
end

if state == nil or state.since == nil then
  if attempts >= tonumber(ARGV[7]) then
    for _, kind in ipairs({'complained', 'bounced', 'deferred'}) do
      if bounds[kind] > limits[kind] then
        local total = state and state.total or 0
        redis.call('HSET', KEYS[2], ARGV[1], cmsgpack.pack({since = now, total = total, kind = kind,
                   reason = kind .. ' rate ' .. string.format('%.1f%%', rates[kind] * 100)}))
        event('warmup_paused', kind .. ' rate over ' .. string.format('%.1f%%', limits[kind] * 100))
        return 'paused'
      end
    end
  end
elseif now - state.since >= 3600 and attempts >= 5 then
  -- calm: under half the threshold, and surely (95%) under twice it: 5 clean attempts out of
  -- a provider deferring half are luck, not recovery
  -- (the second test for the signal that caused the hold, and not for complaints: too rare)
  local calm = true
  for kind, limit in pairs(limits) do
    if rates[kind] > limit / 2 then calm = false end
  end
  if state.kind == 'deferred' or state.kind == 'bounced' then
    if upper_bound(counts[state.kind], attempts) > 2 * limits[state.kind] then calm = false end
  end
  if calm then
    redis.call('HSET', KEYS[2], ARGV[1],
               cmsgpack.pack({total = (state.total or 0) + now - state.since}))
    event('warmup_resumed', 'rates back under half their thresholds for an hour')
    return 'resumed'
  end
end
return ''
