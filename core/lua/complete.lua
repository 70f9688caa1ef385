-- Record the outcome of one delivery attempt atomically: acknowledge the queue entry, set
-- the message status, append its event and, for a deferral, put the job back in the delayed
-- set. lib/timeline.lua is prepended (append_event).
-- KEYS[1] jobs stream  KEYS[2] delayed zset  KEYS[3] events stream
-- KEYS[4] stats hash   KEYS[5] message record
-- ARGV[1] stream entry id ("" when the job did not come from the stream)
-- ARGV[2] consumer group  ARGV[3] new status ("" = keep it)  ARGV[4] event (msgpack)
-- ARGV[5] job to retry ("" = none)  ARGV[6] retry due timestamp
-- ARGV[7] events MAXLEN  ARGV[8] now  ARGV[9] retention seconds
-- KEYS[6] pending messages per domain  ARGV[10] recipient domain ("" = leave the count)
--   (the count drops when a message reaches a final status)
if ARGV[1] ~= "" then
  redis.call('XACK', KEYS[1], ARGV[2], ARGV[1])
  redis.call('XDEL', KEYS[1], ARGV[1])
end
local event_id = append_event(KEYS[3], ARGV[7], ARGV[4], KEYS[5], ARGV[8], tonumber(ARGV[9]))
if ARGV[3] ~= "" then  -- "" records an event (a complaint, say) without a new status
  redis.call('HSET', KEYS[5], 's', ARGV[3])
  if ARGV[3] == 'delivered' then redis.call('HSET', KEYS[5], 'dt', ARGV[8]) end
  redis.call('HINCRBY', KEYS[4], ARGV[3], 1)
end
if ARGV[5] ~= "" then
  redis.call('ZADD', KEYS[2], ARGV[6], ARGV[5])
elseif ARGV[10] ~= "" and redis.call('HINCRBY', KEYS[6], ARGV[10], -1) <= 0 then
  redis.call('HDEL', KEYS[6], ARGV[10])
end
return event_id
