-- Take or renew a lease held by one process across every gateway (the webhook dispatcher,
-- the rollup counter). KEYS[1] the lease  ARGV[1] the holder's id  ARGV[2] lease length (ms)
-- Returns 1 while ARGV[1] holds the lease, else 0.
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('PEXPIRE', KEYS[1], ARGV[2])
end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
