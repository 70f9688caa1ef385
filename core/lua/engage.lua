-- Record engagement events (opened, clicked, unsubscribed), any number in one call.
-- KEYS[1] events stream  KEYS[2] stats hash  KEYS[2 + n] the message record of event n
-- ARGV[1] events MAXLEN  ARGV[2] now
-- then per event two values: the event (msgpack: type, timestamp, message_id and its own
-- fields), click window seconds (0: no check).
-- Each event gets the message's first event (the one accept wrote) attached as field
-- 'c', so a reader has email, contact, category and metadata without another lookup;
-- a click sooner than the window after delivery gets 'x' = {machine = true, reason}; the
-- first event of its type by a person (or by a machine) for the message, 'x' = {first = true}.
-- Returns, per event, its id and 1 if the script flagged it as a machine's, else 0.
local out = {}
local now = tonumber(ARGV[2])
for n = 1, #KEYS - 2 do
  local key = KEYS[2 + n]
  local event, window = ARGV[1 + 2 * n], tonumber(ARGV[2 + 2 * n])
  local record = redis.call('HMGET', key, 'ev', 'dt')
  local fields = {'e', event}
  if record[1] then
    local first = string.match(record[1], '^[^,]+')
    local found = redis.call('XRANGE', KEYS[1], first, first)
    if found[1] then
      local f = found[1][2]
      for j = 1, #f, 2 do
        if f[j] == 'e' then
          fields[#fields + 1] = 'c'
          fields[#fields + 1] = f[j + 1]
        end
      end
    end
  end
  local fast = 0
  local changes = {}
  if window > 0 and record[2] and now - tonumber(record[2]) < window then
    fast = 1
    changes.machine = true
    changes.machine_reason = 'click-right-after-delivery'
  end
  -- the first open (click, unsubscribe) of the message by a person, and by a machine, is
  -- marked 'first': what unique counts count
  local body = cmsgpack.unpack(event)
  local machine = fast == 1 or body['machine'] == true
  if record[1] then
    local flag = 'f' .. body['type'] .. (machine and ':m' or ':h')
    if redis.call('HSETNX', key, flag, 1) == 1 then
      changes.first = true
    end
  end
  if next(changes) then
    fields[#fields + 1] = 'x'
    fields[#fields + 1] = cmsgpack.pack(changes)
  end
  local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', unpack(fields))
  -- The timeline lists a message's events; one opened thousands of times (forwarded, or a
  -- scanner in a loop) keeps its first ~200 there; the stream has all of them.
  if record[1] and #record[1] < 4000 then
    redis.call('HSET', key, 'ev', record[1] .. ',' .. id)
  end
  redis.call('HINCRBY', KEYS[2], body['type'], 1)
  out[#out + 1] = id
  out[#out + 1] = fast
end
return out
