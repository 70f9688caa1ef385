-- Accept one batch atomically: idempotency record, batch content (stored once),
-- one message record, one `queued` event and one queue entry per recipient.
-- KEYS[1] jobs stream   KEYS[2] delayed zset   KEYS[3] events stream
-- KEYS[4] stats hash    KEYS[5] batch content  KEYS[6] idempotency record ("" = none)
-- KEYS[7] pending messages per recipient domain (hash)
-- ARGV[1] batch content (msgpack)  ARGV[2] retention seconds  ARGV[3] request digest
-- ARGV[4] response (JSON)          ARGV[5] recipients (msgpack array of
--         {m=message id, q=0 queue now | due timestamp, j=job, e=event})
--         and d=recipient domain, counted in the per-domain pending hash KEYS[7]
-- ARGV[6] message key prefix       ARGV[7] events MAXLEN      ARGV[8] now (unix seconds)
-- Returns {"new", response} or {"replay", digest, response}.
if KEYS[6] ~= "" then
  local prior = redis.call('HMGET', KEYS[6], 'digest', 'response')
  if prior[1] then
    return {'replay', prior[1], prior[2]}
  end
end

local ttl = tonumber(ARGV[2])
redis.call('SET', KEYS[5], ARGV[1], 'EX', ttl)
local recipients = cmsgpack.unpack(ARGV[5])
local queued, scheduled = 0, 0
for _, r in ipairs(recipients) do
  local event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[7], '*', 'e', r.e)
  local status = 'queued'
  if r.q == 0 then
    redis.call('XADD', KEYS[1], '*', 'j', r.j)
    queued = queued + 1
  else
    redis.call('ZADD', KEYS[2], r.q, r.j)
    status = 'scheduled'
    scheduled = scheduled + 1
  end
  redis.call('HINCRBY', KEYS[7], r.d, 1)
  local key = ARGV[6] .. r.m
  redis.call('HSET', key, 's', status, 'ev', event_id, 'u', ARGV[8])
  redis.call('EXPIRE', key, ttl)
end
redis.call('HINCRBY', KEYS[4], 'queued', queued)
redis.call('HINCRBY', KEYS[4], 'scheduled', scheduled)
if KEYS[6] ~= "" then
  redis.call('HSET', KEYS[6], 'digest', ARGV[3], 'response', ARGV[4])
  redis.call('EXPIRE', KEYS[6], 86400)
end
return {'new', ARGV[4]}
