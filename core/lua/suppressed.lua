-- Look up the suppression entries that may stop a group of messages, in one call.
-- KEYS[i] the bucket hash of the i-th address (all of one shard);
-- ARGV per address: how many fields are asked of its bucket, then those fields
-- (the address, and the address with the message's category).
-- Returns every asked field's value in order (nil where there is no entry).
local out, at = {}, 1
for i = 1, #KEYS do
  local count = tonumber(ARGV[at])
  local found = redis.call('HMGET', KEYS[i], unpack(ARGV, at + 1, at + count))
  for j = 1, count do out[#out + 1] = found[j] end
  at = at + count + 1
end
return out
