-- Count a replayed answer in its idempotency record (KEYS[1]), if the record still exists
-- (it may have expired since it was read; HINCRBY would then make one without a TTL): a
-- write, so that the WAIT that follows on the same connection (SLUICE_REDIS_MIN_REPLICAS)
-- waits for the replication stream up to now, which holds the batch the record answers for.
-- Returns 1 if counted, 0 if the record is gone.
if redis.call('EXISTS', KEYS[1]) == 0 then
  return 0
end
redis.call('HINCRBY', KEYS[1], 'replays', 1)
return 1
