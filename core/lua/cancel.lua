-- Cancel waiting jobs of one shard, each with its record, atomically: a job still in its set
-- (the delayed set, or a paused campaign's parked set) leaves it, and its message gets the
-- 'cancelled' event and status and leaves the pending count; a job gone meanwhile (sent on,
-- or cancelled by another call) is left alone. lib/timeline.lua is prepended (append_event,
-- set_status, leave_pending).
-- KEYS[1] events stream  KEYS[2] stats hash  KEYS[3] pending per domain  KEYS[4] the set
-- KEYS[4 + i] message record of job i
-- ARGV[1] events MAXLEN  ARGV[2] now  ARGV[3] retention seconds
-- then per job: the job as stored in the set, its event (msgpack), its recipient domain
-- Returns 1 per job cancelled, 0 per job not found, in order.
local done = {}
for i = 1, #KEYS - 4 do
  local base = 3 + 3 * (i - 1)
  local job, event, domain = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  if redis.call('ZREM', KEYS[4], job) == 1 then
    local record = KEYS[4 + i]
    append_event(KEYS[1], ARGV[1], event, record, ARGV[2], tonumber(ARGV[3]))
    set_status(record, KEYS[2], 'cancelled')
    leave_pending(KEYS[3], domain)
    done[i] = 1
  else
    done[i] = 0
  end
end
return done
