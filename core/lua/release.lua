-- Move delayed jobs (ARGV, each as stored in KEYS[1], the delayed set) into the jobs stream
-- (KEYS[2]) now: a bulk release or retry. A job no longer in the set (promoted, or taken by
-- another action) is skipped. Returns 1 per job moved, 0 per job skipped, in order.
local moved = {}
for i, job in ipairs(ARGV) do
  if redis.call('ZREM', KEYS[1], job) == 1 then
    redis.call('XADD', KEYS[2], '*', 'j', job)
    moved[i] = 1
  else
    moved[i] = 0
  end
end
return moved
