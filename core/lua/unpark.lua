-- Release up to ARGV[1] held jobs of a resumed campaign (KEYS[1], one shard's parked set)
-- into the jobs stream (KEYS[2]), oldest first; returns how many moved.
local jobs = redis.call('ZRANGE', KEYS[1], 0, tonumber(ARGV[1]) - 1)
for _, job in ipairs(jobs) do
  redis.call('XADD', KEYS[2], '*', 'j', job)
end
if #jobs > 0 then
  redis.call('ZREM', KEYS[1], unpack(jobs))
end
return #jobs
