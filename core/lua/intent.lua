-- The intent of a batch whose recipients span several shards, kept for its Idempotency-Key
-- before any shard is written (core/store/accepting.py): a retry with the same key finds
-- the batch id and finishes the shards that had not committed.
-- KEYS[1] intent record
-- ARGV[1] request digest  ARGV[2] answer without the policy outcomes (JSON)  ARGV[3] batch id
-- ARGV[4] the shard of each accepted recipient, in order (one byte each)  ARGV[5] TTL seconds
-- Returns false when the intent is new (written), else the earlier {digest, batch id}.
local found = redis.call('HMGET', KEYS[1], 'digest', 'batch')
if found[1] then
  return found
end
redis.call('HSET', KEYS[1], 'digest', ARGV[1], 'response', ARGV[2], 'batch', ARGV[3],
           'order', ARGV[4])
redis.call('EXPIRE', KEYS[1], tonumber(ARGV[5]))
return false
