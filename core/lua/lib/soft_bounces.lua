-- Prepended (after lib/timeline.lua) to the scripts that record an outcome about a message
-- (complete.lua, report.lua): keep the recipient's run of soft-bounced messages (the
-- soft-bounce limit, core/suppressions.py, mta/soft_bounces.py).

-- A run (hash): n soft-bounced messages, first = when the first of them ended, and d = the
-- message whose delivery ends the run unless a report says later that it bounced after all
-- (a relay accepts, then returns a DSN). An address without a run has no key: a delivery
-- creates none.

-- A message was delivered: the run, if there is one, ends at the next outcome unless that
-- is this message's bounce; a delivery before this one stands, and ends it now.
local function delivered(run, message_id)
  if redis.call('EXISTS', run) == 0 then return end
  if redis.call('HEXISTS', run, 'd') == 1 then
    redis.call('DEL', run)
  else
    redis.call('HSET', run, 'd', message_id)
  end
end

-- A report says a delivered message bounced, not softly (policy, spam, content): it was no
-- delivery, but counts for nothing either.
local function undelivered(run, message_id)
  if redis.call('HGET', run, 'd') == message_id then redis.call('HDEL', run, 'd') end
end

-- A message that ended soft-bounced, counted once (the message record's 'sb' flag). At
-- ``limit.messages`` or more in the run, the first at least ``limit.seconds`` before now,
-- the address is suppressed (unless it has a global entry already) and the message's
-- timeline gets the ``suppressed`` event. Returns true when it suppressed the address.
-- limit = {messages, seconds, forget (the run's time to live), stream, maxlen, ttl,
--          count (the shard's suppression count key)}
-- suppression = {bucket, field, entry, event}
local function count_soft_bounce(limit, record, run, message_id, suppression, now)
  if redis.call('HSETNX', record, 'sb', now) == 0 then return false end
  local pending = redis.call('HGET', run, 'd')
  if pending then
    redis.call('HDEL', run, 'd')
    if pending ~= message_id then  -- another message was delivered in between
      redis.call('HDEL', run, 'n', 'first')
    end
  end
  local n = redis.call('HINCRBY', run, 'n', 1)
  redis.call('HSETNX', run, 'first', now)
  redis.call('EXPIRE', run, limit.forget)
  local first = tonumber(redis.call('HGET', run, 'first'))
  if n < limit.messages or tonumber(now) - first < limit.seconds then return false end
  redis.call('DEL', run)
  if redis.call('HSETNX', suppression.bucket, suppression.field, suppression.entry) == 0 then
    return false  -- suppressed already, for another reason: that entry stays
  end
  redis.call('INCR', limit.count)
  local extra = cmsgpack.pack({soft_bounces = n, first_soft_bounce_ts = first})
  append_event(limit.stream, limit.maxlen, suppression.event, record, now, limit.ttl, extra)
  return true
end
