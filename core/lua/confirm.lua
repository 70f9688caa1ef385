-- An earlier answer to an Idempotency-Key (KEYS[1]), read for a replay that will WAIT for
-- replicas (SLUICE_REDIS_MIN_REPLICAS): the fields named in ARGV (the first one tells whether
-- there is a record), or false if there is none. A record found is counted in its "replays" field: a write, so that the WAIT that
-- follows on the same connection waits for the replication stream up to now, which holds
-- the batch the record answers for. (A record that does not exist is not written: HINCRBY
-- would make one without a TTL.)
local found = redis.call('HMGET', KEYS[1], unpack(ARGV))
if not found[1] then
  return false
end
redis.call('HINCRBY', KEYS[1], 'replays', 1)
return found
