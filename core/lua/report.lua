-- Record what an inbound report (a bounce or a complaint) says about one message, once: the
-- first report of its kind appends the message's event, may set its status and adds a
-- suppression, or keeps the recipient's run of soft bounces (lib/soft_bounces.lua); any later one
-- (the same report sent again, or to twenty fbl@ addresses at once) changes nothing. A
-- message whose record expired is not recreated.
-- lib/timeline.lua (append_event, set_status) and lib/soft_bounces.lua (undelivered, count_soft_bounce)
-- are prepended.
-- KEYS[1] message record  KEYS[2] events stream  KEYS[3] stats hash
-- KEYS[4] suppression bucket hash of the recipient  KEYS[5] suppression count
-- KEYS[6] the recipient's run of soft bounces (only with a run action, ARGV[9])
-- ARGV[1] the message record's flag for this kind  ARGV[2] event (msgpack)
-- ARGV[3] new status ("" = keep it)  ARGV[4] events MAXLEN  ARGV[5] now
-- ARGV[6] retention seconds  ARGV[7] suppression field ("" = none)  ARGV[8] suppression entry
-- ARGV[9] run: "count" (a soft bounce: the entry of ARGV[7], ARGV[8] is added only at the
--   limit), "undelivered" (a bounce that is neither soft nor hard) or ""
-- ARGV[10] message id  ARGV[11] soft-bounce limit: messages  ARGV[12] its seconds
-- ARGV[13] a run's time to live  ARGV[14] the suppressed event recorded at the limit (msgpack)
-- Returns false when the message is unknown or this kind was recorded before, else
-- {event id, sending IP, provider} (the last two "" unless a warming IP sent it).
if redis.call('EXISTS', KEYS[1]) == 0 then return false end
if redis.call('HSETNX', KEYS[1], ARGV[1], ARGV[5]) == 0 then return false end
local event_id = append_event(KEYS[2], ARGV[4], ARGV[2], KEYS[1], ARGV[5], tonumber(ARGV[6]))
if ARGV[3] ~= "" then
  set_status(KEYS[1], KEYS[3], ARGV[3])
end
if ARGV[9] == 'count' then
  local limit = {messages = tonumber(ARGV[11]), seconds = tonumber(ARGV[12]),
                 forget = tonumber(ARGV[13]), stream = KEYS[2], maxlen = ARGV[4],
                 ttl = tonumber(ARGV[6]), count = KEYS[5]}
  local suppression = {bucket = KEYS[4], field = ARGV[7], entry = ARGV[8], event = ARGV[14]}
  count_soft_bounce(limit, KEYS[1], KEYS[6], ARGV[10], suppression, ARGV[5])
else
  if ARGV[9] == 'undelivered' then undelivered(KEYS[6], ARGV[10]) end
  if ARGV[7] ~= "" and redis.call('HSET', KEYS[4], ARGV[7], ARGV[8]) == 1 then
    redis.call('INCR', KEYS[5])
  end
end
local sender = redis.call('HMGET', KEYS[1], 'ip', 'pv')
return {event_id, sender[1] or "", sender[2] or ""}
