-- Take one message's warmup budget on the first sending IP that has room, atomically
-- across every worker and node.
-- KEYS[2i - 1], KEYS[2i]: candidate i's counters for today and for this hour (its IP and the
--   recipient's provider group; core/keys.py warmup_sent), in order of preference
-- ARGV[1] hour (0-23)  ARGV[2] seconds to the next hour  ARGV[3] seconds to the next UTC day
-- then per candidate: ip, daily budget (-1: warm), hourly share
-- By the end of hour h at most ceil(daily * (h + 1) / 24) may have left today, and one hour
-- takes at most twice its share (bounded carry-over).
-- Returns {ip, 0} for the IP taken, or {"", seconds until some budget opens}.
local hour = tonumber(ARGV[1])
local to_hour, to_day = tonumber(ARGV[2]), tonumber(ARGV[3])
local wait = to_day
for n = 1, (#ARGV - 3) / 3 do
  local i = 4 + 3 * (n - 1)
  local ip, daily, hourly = ARGV[i], tonumber(ARGV[i + 1]), tonumber(ARGV[i + 2])
  if daily < 0 then
    return {ip, 0}
  end
  local day_key, hour_key = KEYS[2 * n - 1], KEYS[2 * n]
  local sent_today = tonumber(redis.call('GET', day_key) or '0')
  local sent_hour = tonumber(redis.call('GET', hour_key) or '0')
  local by_now = math.min(daily, math.ceil(daily * (hour + 1) / 24))
  local this_hour = math.min(2 * hourly, by_now - (sent_today - sent_hour))
  if sent_today < daily and sent_hour < this_hour then
    redis.call('INCR', day_key)
    redis.call('EXPIRE', day_key, 40 * 86400)
    redis.call('INCR', hour_key)
    redis.call('EXPIRE', hour_key, 2 * 86400)
    return {ip, 0}
  end
  if sent_today < daily and to_hour < wait then
    wait = to_hour
  end
end
return {'', wait}
