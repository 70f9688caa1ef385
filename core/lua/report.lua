-- Record what an inbound report (a bounce or a complaint) says about one message, once: the
-- first report of its kind appends the message's event, may set its status and adds a
-- suppression; any later one (the same report sent again, or to twenty fbl@ addresses at
-- once) changes nothing. A message whose record expired is not recreated.
-- lib/timeline.lua is prepended (append_event).
-- KEYS[1] message record  KEYS[2] events stream  KEYS[3] stats hash
-- KEYS[4] suppression bucket hash of the recipient  KEYS[5] suppression count
-- ARGV[1] the message record's flag for this kind  ARGV[2] event (msgpack)
-- ARGV[3] new status ("" = keep it)  ARGV[4] events MAXLEN  ARGV[5] now
-- ARGV[6] retention seconds  ARGV[7] suppression field ("" = none)  ARGV[8] suppression entry
-- Returns false when the message is unknown or this kind was recorded before, else
-- {event id, sending IP, provider} (the last two "" unless a warming IP sent it).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then return false end
local event_id = append_event(KEYS[2], ARGV[4], ARGV[2], KEYS[1], ARGV[5], tonumber(ARGV[6]))
if ARGV[3] ~= "" then
  redis.call('HSET', KEYS[1], 's', ARGV[3])
  redis.call('HINCRBY', KEYS[3], ARGV[3], 1)
end
if ARGV[7] ~= "" and redis.call('HSET', KEYS[4], ARGV[7], ARGV[8]) == 1 then
  redis.call('INCR', KEYS[5])
end
local sender = redis.call('HMGET', KEYS[1], 'ip', 'pv')
return {event_id, sender[1] or "", sender[2] or ""}
