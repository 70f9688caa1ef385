-- Hold jobs of a paused campaign (one shard's): out of the jobs stream, into the campaign's
-- parked set, each with a 'deferred' event (held_by "paused") in its message's timeline.
-- lib/timeline.lua is prepended (append_event).
-- KEYS[1] jobs stream  KEYS[2] events stream  KEYS[3] the campaign's parked set
-- KEYS[3 + i] message record of job i
-- ARGV[1] consumer group  ARGV[2] events MAXLEN  ARGV[3] now  ARGV[4] retention seconds
-- then per job: stream entry id, job (msgpack), event (msgpack)
local now = ARGV[3]
for i = 1, #KEYS - 3 do
  local base = 4 + 3 * (i - 1)
  local entry, job, event = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  redis.call('ZADD', KEYS[3], now, job)
  append_event(KEYS[2], ARGV[2], event, KEYS[3 + i], now, tonumber(ARGV[4]))
  if entry ~= '' then
    redis.call('XACK', KEYS[1], ARGV[1], entry)
    redis.call('XDEL', KEYS[1], entry)
  end
end
return #KEYS - 3
