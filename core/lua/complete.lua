-- Record the outcomes of a group of delivery attempts atomically: acknowledge their queue
-- entries, set each message's status, append its event and, for a deferral, put the job back
-- in the delayed set; a delivery ends its address's run of soft bounces, a message that
-- ended soft-bounced extends it and may suppress the address (lib/soft_bounces.lua).
-- lib/timeline.lua (append_event, set_status, leave_pending) and lib/soft_bounces.lua
-- (delivered, count_soft_bounce) are prepended.
-- KEYS[1] jobs stream  KEYS[2] delayed zset  KEYS[3] events stream  KEYS[4] stats hash
-- KEYS[5] pending messages per domain (the count drops when a message reaches a final status)
-- KEYS[6] suppression count
-- then per outcome, in order: its message record; for run "delivered" and "count" its
-- address's run of soft bounces; for "count" also its address's suppression bucket; for
-- "hard" (a hard bounce) its address's suppression bucket
-- ARGV[1] consumer group  ARGV[2] events MAXLEN  ARGV[3] now  ARGV[4] retention seconds
-- ARGV[5] soft-bounce limit: messages  ARGV[6] its seconds  ARGV[7] a run's time to live
-- then eleven arguments per outcome i, from ARGV[8 + 11 * (i - 1)]:
--   stream entry id ("" when the job did not come from the stream)
--   new status ("" = keep it)   event (msgpack)
--   job to retry ("" = none)    retry due timestamp
--   recipient domain ("" = leave the pending count)
--   run: "delivered", "count" (ended soft-bounced), "hard" (hard-bounced) or ""
--   message id
--   for "count": suppression field, suppression entry, suppressed event (msgpack)
--   for "hard": suppression field, suppression entry (it replaces an entry there), ""
-- Returns the event id of each outcome, in order.
local now = ARGV[3]
local retention = tonumber(ARGV[4])
local limit = {messages = tonumber(ARGV[5]), seconds = tonumber(ARGV[6]),
               forget = tonumber(ARGV[7]), stream = KEYS[3], maxlen = ARGV[2],
               ttl = retention, count = KEYS[6]}
local acknowledged = {}
local event_ids = {}
local key = 7
for i = 1, (#ARGV - 7) / 11 do
  local base = 7 + 11 * (i - 1)
  local entry, status, event = ARGV[base + 1], ARGV[base + 2], ARGV[base + 3]
  local retry_job, retry_at, domain = ARGV[base + 4], ARGV[base + 5], ARGV[base + 6]
  local run, message_id = ARGV[base + 7], ARGV[base + 8]
  local record = KEYS[key]
  key = key + 1
  if entry ~= "" then
    acknowledged[#acknowledged + 1] = entry
  end
  event_ids[i] = append_event(KEYS[3], ARGV[2], event, record, now, retention)
  if status ~= "" then  -- "" records an event (a complaint, say) without a new status
    set_status(record, KEYS[4], status)
    if status == 'delivered' then
      -- the sending IP and pool, for statistics of what happens to the message later
      local sent = cmsgpack.unpack(event)
      redis.call('HSET', record, 'dt', now, 'si', sent['ip'] or '', 'sp', sent['pool'] or '')
    end
  end
  if run == 'delivered' then
    delivered(KEYS[key], message_id)
    key = key + 1
  elseif run == 'count' then
    local suppression = {bucket = KEYS[key + 1], field = ARGV[base + 9],
                         entry = ARGV[base + 10], event = ARGV[base + 11]}
    count_soft_bounce(limit, record, KEYS[key], message_id, suppression, now)
    key = key + 2
  elseif run == 'hard' then
    if redis.call('HSET', KEYS[key], ARGV[base + 9], ARGV[base + 10]) == 1 then
      redis.call('INCR', KEYS[6])
    end
    key = key + 1
  end
  if retry_job ~= "" then
    redis.call('ZADD', KEYS[2], retry_at, retry_job)
  elseif domain ~= "" then
    leave_pending(KEYS[5], domain)
  end
end
if #acknowledged > 0 then
  redis.call('XACK', KEYS[1], ARGV[1], unpack(acknowledged))
  redis.call('XDEL', KEYS[1], unpack(acknowledged))
end
return event_ids
