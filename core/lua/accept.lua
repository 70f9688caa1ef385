-- Accept one batch, or one shard's part of it, atomically: idempotency record, batch content
-- (stored once), and per recipient the contact policy (suppression, frequency caps, quiet
-- hours), one message record, one event and, unless suppressed or capped, one queue entry.
-- Every key is passed in KEYS (core/store/accepting.py builds the list), all of one shard:
-- KEYS[1] jobs stream   KEYS[2] delayed zset   KEYS[3] events stream   KEYS[4] stats hash
-- KEYS[5] batch content KEYS[6] pending messages per recipient domain (hash)
-- KEYS[7] idempotency record, when ARGV[9] is "1"; then, recipient after recipient, its
--   message record, its suppression bucket and its counts per cap rule (in the order of the
--   rules; none when the batch has no rules)
-- ARGV[1] batch content (msgpack; "": written before, in the batch's home shard)
-- ARGV[2] retention seconds  ARGV[3] request digest
-- ARGV[4] response without the policy outcomes (JSON; "" without an idempotency record)
-- ARGV[5] recipients, msgpack array of arrays (core/jobs.py AcceptEntry, by position):
--   {1 message id, 2 due (0 = now), 3 job, 4 queued event, 5 recipient domain,
--    6 field of the address, 7 field of address+category (or nil),
--    8 true if transactional (unsubscribes do not stop it), 9 contact for caps (or nil),
--    10 time zone for quiet hours (or nil), 11 ramp offset seconds}
-- ARGV[6] events MAXLEN  ARGV[7] now (unix seconds)
-- ARGV[8] policy, msgpack {rules={{k=key, c=category, l=limit, w=window, a=action}},
--   zones={[zone]={start1, end1, start2, end2, ...}}}
-- ARGV[9] "1" when KEYS[7] is the idempotency record
-- ARGV[10] "1" when the caller WAITs for replicas after this call
-- Returns {"new", outcomes} or {"replay", digest, response, outcomes} (a replay the caller
-- WAITs after counts itself in the record's "replays" field); outcomes has one
-- line per recipient entry: "q" queued, "s<time>" scheduled, "x<reason>|<scope>"
-- suppressed, "c<category>|<limit>|<window>" capped.
local idempotent = ARGV[9] == '1'
if idempotent then
  local prior = redis.call('HMGET', KEYS[7], 'digest', 'response', 'outcomes')
  if prior[1] then
    if ARGV[10] == '1' then
      -- a write, so that the WAIT after this call (SLUICE_REDIS_MIN_REPLICAS) waits for the
      -- replication stream up to now, which holds the batch's own writes
      redis.call('HINCRBY', KEYS[7], 'replays', 1)
    end
    return {'replay', prior[1], prior[2], prior[3] or ''}
  end
end

local REASONS = {u = 'unsubscribe', b = 'hard_bounce', c = 'complaint', m = 'manual',
                 s = 'soft_bounce_limit'}
local ttl = tonumber(ARGV[2])
local now = tonumber(ARGV[7])
local policy = cmsgpack.unpack(ARGV[8])
local rules = policy.rules or {}
local zones = policy.zones or {}
if ARGV[1] ~= '' then redis.call('SET', KEYS[5], ARGV[1], 'EX', ttl) end

-- Points (send times) of one rule for one contact, oldest first; older ones are dropped.
local function load_points(key, window)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  local flat = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local points = {}
  for i = 2, #flat, 2 do points[#points + 1] = tonumber(flat[i]) end
  return points
end

-- Would a message at t keep every window (s - w, s] of this rule at or under its limit?
local function fits(points, rule, t)
  local w, limit = rule.w, rule.l
  local count = 0
  for _, s in ipairs(points) do
    if s > t - w and s <= t then count = count + 1 end
  end
  if count + 1 > limit then return false end
  for _, later in ipairs(points) do
    if later > t and later < t + w then
      local n = 0
      for _, s in ipairs(points) do
        if s > later - w and s <= later then n = n + 1 end
      end
      if n + 1 > limit then return false end
    end
  end
  return true
end

local function fits_all(all_points, t)
  for i, rule in ipairs(rules) do
    if not fits(all_points[i], rule, t) then return false end
  end
  return true
end

-- The earliest moment at or after t that every rule allows: t, or just as a point leaves a window.
local function earliest(all_points, t)
  if fits_all(all_points, t) then return t end
  local candidates = {}
  for i, rule in ipairs(rules) do
    for _, s in ipairs(all_points[i]) do
      if s + rule.w > t then candidates[#candidates + 1] = s + rule.w end
    end
  end
  table.sort(candidates)
  for _, c in ipairs(candidates) do
    if fits_all(all_points, c) then return c end
  end
  return candidates[#candidates]
end

local function after_quiet(zone, t, offset)
  local bounds = zones[zone]
  if not bounds then return t end
  for i = 1, #bounds, 2 do
    if t >= bounds[i] and t < bounds[i + 1] then return bounds[i + 1] + offset end
  end
  return t
end

local recipients = cmsgpack.unpack(ARGV[5])
local first_key = idempotent and 8 or 7
local stride = 2 + #rules
local outcomes = {}
local counts = {queued = 0, scheduled = 0, suppressed = 0, capped = 0}
for n, entry in ipairs(recipients) do
  local base = first_key + (n - 1) * stride
  local r = {m = entry[1], q = entry[2], j = entry[3], e = entry[4], d = entry[5],
             sf = entry[6], sc = entry[7], tx = entry[8], ci = entry[9], z = entry[10],
             o = entry[11]}
  local status, extra, outcome = 'queued', nil, 'q'
  local due = r.q
  if due == 0 then due = now end

  -- 1. suppression: global entry first, then the category's
  local bucket = KEYS[base + 1]
  local found = r.sc and redis.call('HMGET', bucket, r.sf, r.sc) or redis.call('HMGET', bucket, r.sf)
  for i, value in ipairs(found) do
    if value then
      local code = cmsgpack.unpack(value)[1]
      if not (r.tx == true and code == 'u') then
        local scope = 'global'
        if i == 2 then scope = string.sub(r.sc, #r.sf + 2) end
        status = 'suppressed'
        extra = {type = 'suppressed', reason = REASONS[code] or 'manual', scope = scope}
        outcome = 'x' .. extra.reason .. '|' .. scope
        break
      end
    end
  end

  -- 2. frequency caps, with quiet hours applied at whatever time the caps allow
  local send_at, held = due, nil
  if status == 'queued' then
    local all_points, cap_keys = {}, {}
    if r.ci and #rules > 0 then
      for i, rule in ipairs(rules) do
        cap_keys[i] = KEYS[base + 1 + i]
        all_points[i] = load_points(cap_keys[i], rule.w)
      end
      for i, rule in ipairs(rules) do
        if rule.a == 'drop' and not fits(all_points[i], rule, due) then
          status = 'capped'
          extra = {type = 'capped', cap_category = rule.c, cap_limit = rule.l,
                   cap_window_seconds = rule.w}
          outcome = 'c' .. rule.c .. '|' .. rule.l .. '|' .. rule.w
          break
        end
      end
    end
    if status == 'queued' then
      for _ = 1, 20 do
        local allowed = send_at
        if #cap_keys > 0 then allowed = earliest(all_points, send_at) end
        if allowed > send_at then held = 'frequency_cap' end
        local after = allowed
        if r.z then after = after_quiet(r.z, allowed, r.o or 0) end
        if after > allowed then held = held or 'quiet_hours' end
        send_at = after
        if after == allowed then break end
      end
      for i, rule in ipairs(rules) do
        if cap_keys[i] then
          redis.call('ZADD', cap_keys[i], send_at, r.m)
          local last = send_at
          for _, s in ipairs(all_points[i]) do
            if s > last then last = s end
          end
          -- relative to the script's clock: the counts live until the last one leaves its window
          redis.call('PEXPIRE', cap_keys[i], math.ceil((last + rule.w - now) * 1000))
        end
      end
      if send_at > due then
        extra = {send_at_ts = send_at, held_by = held}
      end
      if send_at > now then
        status = 'scheduled'
        outcome = 's' .. string.format('%.3f', send_at)
      end
    end
  end

  local event_id
  if extra then
    event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'e', r.e,
                          'x', cmsgpack.pack(extra))
  else
    event_id = redis.call('XADD', KEYS[3], 'MAXLEN', '~', ARGV[6], '*', 'e', r.e)
  end
  if status == 'queued' then
    redis.call('XADD', KEYS[1], '*', 'j', r.j)
  elseif status == 'scheduled' then
    redis.call('ZADD', KEYS[2], send_at, r.j)
  end
  if status == 'queued' or status == 'scheduled' then
    redis.call('HINCRBY', KEYS[6], r.d, 1)
  end
  counts[status] = counts[status] + 1
  outcomes[#outcomes + 1] = outcome
  local key = KEYS[base]
  redis.call('HSET', key, 's', status, 'ev', event_id, 'u', ARGV[7])
  redis.call('EXPIRE', key, ttl)
end
for status, n in pairs(counts) do
  if n > 0 then redis.call('HINCRBY', KEYS[4], status, n) end
end
local joined = table.concat(outcomes, '\n')
if idempotent then
  redis.call('HSET', KEYS[7], 'digest', ARGV[3], 'response', ARGV[4], 'outcomes', joined)
  redis.call('EXPIRE', KEYS[7], 86400)
end
return {'new', joined}
