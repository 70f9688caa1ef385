-- Prepended to the scripts that write a message's timeline (complete.lua, report.lua,
-- cancel.lua, park.lua): append an event to the events stream and its id to the message's
-- timeline; set a final status and leave the pending count.

-- ``extra``: what the script decided after the event was packed (msgpack; nil for none),
-- merged into the event when it is read (core/events.py unpack_event).
local function append_event(stream, maxlen, event, record, now, ttl, extra)
  local event_id
  if extra then
    event_id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', event, 'x', extra)
  else
    event_id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', event)
  end
  local prior = redis.call('HGET', record, 'ev')
  local events = event_id
  if prior then
    events = prior .. ',' .. event_id
  end
  redis.call('HSET', record, 'ev', events, 'u', now)
  redis.call('EXPIRE', record, ttl)
  return event_id
end

-- The message's new status, counted in the shard's stats hash.
local function set_status(record, stats, status)
  redis.call('HSET', record, 's', status)
  redis.call('HINCRBY', stats, status, 1)
end

-- A message to ``domain`` is no longer waiting: one less in the pending count per domain.
local function leave_pending(pending, domain)
  if redis.call('HINCRBY', pending, domain, -1) <= 0 then
    redis.call('HDEL', pending, domain)
  end
end
