-- Add or remove suppression entries, keeping the total in KEYS[1].
-- KEYS[2..] the bucket hash of each entry, in order
-- ARGV[1] "add" | "remove", then per entry: field, value ("" for remove).
-- Returns how many entries were added (new, not replaced) or removed.
local changed = 0
if ARGV[1] == 'add' then
  for i = 2, #KEYS do
    changed = changed + redis.call('HSET', KEYS[i], ARGV[2 * i - 2], ARGV[2 * i - 1])
  end
  if changed > 0 then redis.call('INCRBY', KEYS[1], changed) end
else
  for i = 2, #KEYS do
    changed = changed + redis.call('HDEL', KEYS[i], ARGV[2 * i - 2])
  end
  if changed > 0 then redis.call('DECRBY', KEYS[1], changed) end
end
return changed
