-- SET KEYS[1] to ARGV[1] for ARGV[2] seconds: a script so that it can be followed by WAIT on
-- its connection (Script.then_wait), as a batch's content is before its shards are queued.
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[2]))
return 1
