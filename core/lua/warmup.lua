-- Take one message's warmup budget on the first sending IP that has room, atomically
-- across every worker and node, once per message and day: a message that already took a
-- candidate's budget today gets that IP again without counting.
-- KEYS[3i - 2], KEYS[3i - 1], KEYS[3i]: candidate i's counters for today and for this hour
--   and its hash of today's messages (its IP and the recipient's provider group;
--   core/keys.py warmup_sent, warmup_taken), in order of preference
-- ARGV[1] hour (0-23)  ARGV[2] seconds to the next hour  ARGV[3] seconds to the next UTC day
-- ARGV[4] message id ("" : not remembered)
-- then per candidate: ip, daily budget (-1: warm), hourly share
-- By the end of hour h at most ceil(daily * (h + 1) / 24) may have left today, and one hour
-- takes at most twice its share (bounded carry-over).
-- Returns {ip, 0} for the IP taken, or {"", seconds until some budget opens}.
local hour = tonumber(ARGV[1])
local to_hour, to_day = tonumber(ARGV[2]), tonumber(ARGV[3])
local message = ARGV[4]
local candidates = (#ARGV - 4) / 3
if message ~= '' then
  for n = 1, candidates do
    if redis.call('HEXISTS', KEYS[3 * n], message) == 1 then
      return {ARGV[5 + 3 * (n - 1)], 0}
    end
  end
end
local wait = to_day
for n = 1, candidates do
  local i = 5 + 3 * (n - 1)
  local ip, daily, hourly = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if daily < 0 then
    return {ip, 0}
  end
  local day_key, hour_key = KEYS[3 * n - 2], KEYS[3 * n - 1]
  local sent_today = tonumber(redis.call('GET', day_key) or '0')
  local sent_hour = tonumber(redis.call('GET', hour_key) or '0')
  local by_now = math.min(daily, math.ceil(daily * (hour + 1) / 24))
  local this_hour = math.min(2 * hourly, by_now - (sent_today - sent_hour))
  if sent_today < daily and sent_hour < this_hour then
    redis.call('INCR', day_key)
    redis.call('EXPIRE', day_key, 40 * 86400)
    redis.call('INCR', hour_key)
    redis.call('EXPIRE', hour_key, 2 * 86400)
    if message ~= '' then
      redis.call('HSET', KEYS[3 * n], message, 1)
      redis.call('EXPIRE', KEYS[3 * n], 2 * 86400)
    end
    return {ip, 0}
  end
  if sent_today < daily and to_hour < wait then
    wait = to_hour
  end
end
return {'', wait}
