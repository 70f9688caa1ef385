-- Count a replayed answer in its idempotency record (KEYS[1], which exists): a write, so
-- that the WAIT that follows on the same connection (SLUICE_REDIS_MIN_REPLICAS) waits for
-- the replication stream up to now, which holds the batch the record answers for.
return redis.call('HINCRBY', KEYS[1], 'replays', 1)
