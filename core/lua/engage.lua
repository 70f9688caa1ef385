-- Record an engagement event (opened, clicked, unsubscribed) for a message in one call.
-- KEYS[1] events stream  KEYS[2] message record  KEYS[3] stats hash
-- ARGV[1] event (msgpack: type, timestamp, message_id, and its own fields)
-- ARGV[2] events MAXLEN  ARGV[3] now  ARGV[4] click window seconds (0: no check)
-- The message's first event (the one accept wrote) is attached as field 'c', so a
-- reader gets email, contact, category and metadata without another lookup; a click
-- sooner than the window after delivery gets 'x' = {machine = true, reason}.
-- Returns {event id, 1 if the script flagged it as a machine's, else 0}.
local record = redis.call('HMGET', KEYS[2], 'ev', 'dt')
local fields = {'e', ARGV[1]}
if record[1] then
  local first = string.match(record[1], '^[^,]+')
  local found = redis.call('XRANGE', KEYS[1], first, first)
  if found[1] then
    local f = found[1][2]
    for i = 1, #f, 2 do
      if f[i] == 'e' then
        fields[#fields + 1] = 'c'
        fields[#fields + 1] = f[i + 1]
      end
    end
  end
end
local fast = 0
local window = tonumber(ARGV[4])
if window > 0 and record[2] and tonumber(ARGV[3]) - tonumber(record[2]) < window then
  fast = 1
  fields[#fields + 1] = 'x'
  fields[#fields + 1] = cmsgpack.pack({machine = true, machine_reason = 'click-right-after-delivery'})
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[2], '*', unpack(fields))
-- The message's timeline lists its events; a message opened thousands of times (forwarded,
-- or a scanner in a loop) keeps its first ~200 there; all of them are in the stream.
if record[1] and #record[1] < 4000 then
  redis.call('HSET', KEYS[2], 'ev', record[1] .. ',' .. id)
end
local kind = cmsgpack.unpack(ARGV[1])['type']
redis.call('HINCRBY', KEYS[3], kind, 1)
return {id, fast}
