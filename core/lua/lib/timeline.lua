-- Prepended to the scripts that record an outcome about a message (complete.lua, report.lua):
-- append an event to the events stream and its id to the message's timeline.
local function append_event(stream, maxlen, event, record, now, ttl)
  local event_id = redis.call('XADD', stream, 'MAXLEN', '~', maxlen, '*', 'e', event)
  local prior = redis.call('HGET', record, 'ev')
  local events = event_id
  if prior then
    events = prior .. ',' .. event_id
  end
  redis.call('HSET', record, 'ev', events, 'u', now)
  redis.call('EXPIRE', record, ttl)
  return event_id
end

