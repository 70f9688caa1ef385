-- Add or remove suppression entries, keeping the total in KEYS[1].
-- ARGV[1] "add" | "remove", then triples: bucket hash key, field, value ("" for remove).
-- Returns how many entries were added (new, not replaced) or removed.
local changed = 0
if ARGV[1] == 'add' then
  for i = 2, #ARGV, 3 do
    changed = changed + redis.call('HSET', ARGV[i], ARGV[i + 1], ARGV[i + 2])
  end
  if changed > 0 then redis.call('INCRBY', KEYS[1], changed) end
else
  for i = 2, #ARGV, 3 do
    changed = changed + redis.call('HDEL', ARGV[i], ARGV[i + 1])
  end
  if changed > 0 then redis.call('DECRBY', KEYS[1], changed) end
end
return changed
