-- Move jobs whose time has come from the delayed set into the jobs stream.
-- KEYS[1] delayed zset  KEYS[2] jobs stream
-- ARGV[1] now (unix seconds)  ARGV[2] how many at most
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, tonumber(ARGV[2]))
for _, job in ipairs(due) do
  redis.call('XADD', KEYS[2], '*', 'j', job)
  redis.call('ZREM', KEYS[1], job)
end
return #due
