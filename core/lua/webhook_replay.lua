-- Move every dead-lettered webhook batch to the replay queue, oldest first.
-- KEYS[1] dead letters (list)  KEYS[2] replay queue (list)
-- Returns how many were moved.
local n = 0
while true do
  local batch = redis.call('LPOP', KEYS[1])
  if not batch then break end
  redis.call('RPUSH', KEYS[2], batch)
  n = n + 1
end
return n
