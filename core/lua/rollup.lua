-- Count a page of one shard's events into its rollups, once: the page is applied only if
-- the shard's rollup cursor is still where the page began (core/store/rollups.py).
-- KEYS[1] the rollup cursor; KEYS[2..] counter hashes and bounce-sample lists
-- ARGV[1] the cursor the page began after ("" for the stream's start)  ARGV[2] its last event
-- ARGV[3] how many keys follow KEYS[1] (n), then n TTLs in seconds (one per key; 0: none)
-- then: count of increments m, then m triples (key number, field, increment);
-- then pairs (key number, reply) of bounce samples, each list kept to its 3 latest
-- Returns 1 when counted, 0 when another counter moved the cursor first.
if (redis.call('GET', KEYS[1]) or '') ~= ARGV[1] then
  return 0
end
local n = tonumber(ARGV[3])
local at = 4 + n
local m = tonumber(ARGV[at])
for i = 0, m - 1 do
  local base = at + 1 + 3 * i
  redis.call('HINCRBY', KEYS[tonumber(ARGV[base])], ARGV[base + 1], tonumber(ARGV[base + 2]))
end
for i = at + 1 + 3 * m, #ARGV, 2 do
  local key = KEYS[tonumber(ARGV[i])]
  redis.call('LPUSH', key, ARGV[i + 1])
  redis.call('LTRIM', key, 0, 2)
end
for k = 1, n do
  local ttl = tonumber(ARGV[3 + k])
  if ttl > 0 then redis.call('EXPIRE', KEYS[1 + k], ttl) end  -- 0: kept (the totals)
end
redis.call('SET', KEYS[1], ARGV[2])
return 1
