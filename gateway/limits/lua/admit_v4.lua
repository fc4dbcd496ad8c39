-- admit_v4: check and take every limit of one gateway key, atomically.
-- v4 (over v3): one admission may cover several model calls (ARGV[10], fan-out: one per
-- model). rpm and max_parallel count each call, all or none: a call takes an rpm entry and
-- a lease entry of its own, the first named by the ticket, the others '<ticket>#2' ...,
-- so the zsets' cardinalities still count calls and the key layout is v3's. 7: more calls
-- than the whole rpm, 8: more than max_parallel (never admitted). A v3 instance sharing the
-- Redis counts a v4 admission's entries like its own; each instance settles what it admitted.
-- v3 (over v2): settled spend and in-flight reservations are kept apart. v2 added each
-- budget reservation (a request's worst-case cost) to the period's spend and refused any
-- request whose reservation did not fit, so a fresh key with a small budget, or a large
-- one at a high price, was "used up" on its first request. Now a request is admitted while
-- settled spend + reservations is below the budget: 5 once settled spend reaches it (for
-- good), 6 while only reservations fill it (they free as their requests settle). A
-- reservation rides on its request's lease (a key with a budget takes one per request,
-- max_parallel or not), so a crashed instance's reservations expire with its leases
-- instead of holding the budget for ever.
-- KEYS: rpm (zset entry -> ms), tpm (hash second -> tokens), leases (zset entry -> expiry ms),
--       spend (hash: '<period>' -> settled USD, 'held:<period>' -> USD reserved in flight,
--              'h:<ticket>' -> '<period> <USD>' reserved by that admission);
--       all share the key's hash tag, so the script touches one cluster slot.
-- ARGV: rpm, tpm, max_parallel, budget_usd (0 = no limit), tokens, cost_usd,
--       ticket (unique per admission), lease_ttl_ms, budget_period, calls (>= 1)
-- Returns {refused, retry_ms, requests_used, requests_reset_ms, tokens_used,
--          tokens_reset_ms, bucket}; refused: 0 admitted, 1 rpm, 2 tpm,
--          3 larger than the whole tpm, 4 max_parallel, 5 budget used up,
--          6 budget held by requests in flight, 7 more calls than the whole rpm,
--          8 more calls than max_parallel.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = math.floor(now / 1000)
local WINDOW = 60000
local rpm, tpm, maxp = tonumber(ARGV[1]), tonumber(ARGV[2]), tonumber(ARGV[3])
local budget, tokens, cost = tonumber(ARGV[4]), tonumber(ARGV[5]), tonumber(ARGV[6])
local ticket, ttl, period = ARGV[7], tonumber(ARGV[8]), ARGV[9]
local calls = tonumber(ARGV[10])

local refused, retry = 0, 0
local used_req, req_reset, used_tok, tok_reset = 0, 0, 0, 0

if rpm > 0 then
  redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - WINDOW)
  used_req = redis.call('ZCARD', KEYS[1])
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  req_reset = (#oldest > 0 and tonumber(oldest[2]) or now) + WINDOW - now
  if calls > rpm then
    refused = 7
  elseif used_req + calls > rpm then
    -- calls slots are free once the entry that many places before the limit leaves the
    -- window (one call: the entry rpm places back).
    local at = used_req + calls - 1 - rpm
    local e = redis.call('ZRANGE', KEYS[1], at, at, 'WITHSCORES')
    refused, retry = 1, tonumber(e[2]) + WINDOW - now
  end
end

if tpm > 0 then
  local flat = redis.call('HGETALL', KEYS[2])
  local live, stale, oldest = {}, {}, second
  for i = 1, #flat, 2 do
    local s, v = tonumber(flat[i]), tonumber(flat[i + 1])
    if s <= second - 60 then
      stale[#stale + 1] = flat[i]
    else
      live[#live + 1] = {s, v}
      used_tok = used_tok + v
      if s < oldest then oldest = s end
    end
  end
  if #stale > 0 then redis.call('HDEL', KEYS[2], unpack(stale)) end
  tok_reset = (oldest + 60) * 1000 - now
  if refused > 0 then
    -- counted for the headers only
  elseif tokens > tpm then
    refused = 3
  elseif used_tok + tokens > tpm then
    refused = 2
    -- Sorted only here, on Redis's one thread shared by every instance: a refusal
    -- needs the buckets oldest first, an admission only the oldest.
    table.sort(live, function(a, b) return a[1] < b[1] end)
    local freed = 0
    for _, b in ipairs(live) do
      freed = freed + b[2]
      if used_tok - freed + tokens <= tpm then
        retry = (b[1] + 60) * 1000 - now
        break
      end
    end
  end
end

local in_flight = 0
if (maxp > 0 or budget > 0) and refused == 0 then
  -- Expired leases go, and the budget reservations riding on them with them.
  local gone = redis.call('ZRANGEBYSCORE', KEYS[3], '-inf', now)
  if #gone > 0 then
    for _, lost in ipairs(gone) do
      local field = 'h:' .. lost
      local reservation = redis.call('HGET', KEYS[4], field)
      if reservation then
        local p, usd = string.match(reservation, '^(%S+) (%S+)$')
        if tonumber(redis.call('HINCRBYFLOAT', KEYS[4], 'held:' .. p, '-' .. usd)) <= 0 then
          redis.call('HDEL', KEYS[4], 'held:' .. p)
        end
        redis.call('HDEL', KEYS[4], field)
      end
    end
    redis.call('ZREMRANGEBYSCORE', KEYS[3], '-inf', now)
  end
  in_flight = redis.call('ZCARD', KEYS[3])
  if maxp == 0 then
    -- no max_parallel: the leases carry budget reservations only
  elseif calls > maxp then
    refused = 8
  elseif in_flight + calls > maxp then
    refused, retry = 4, 1000
  end
end

if budget > 0 and refused == 0 then
  local spent = tonumber(redis.call('HGET', KEYS[4], period) or '0')
  if spent >= budget then
    refused = 5
  elseif in_flight > 0 then
    -- Nothing in flight means nothing reserved: no sum (or float remainder) to read.
    local held = tonumber(redis.call('HGET', KEYS[4], 'held:' .. period) or '0')
    if spent + held >= budget then refused, retry = 6, 1000 end
  end
end

if refused > 0 then
  return {refused, retry, used_req, req_reset, used_tok, tok_reset, -1}
end

-- One zset entry per call, all at score: ticket, ticket#2, ... One call, the common case,
-- adds the ticket alone, as v3 did: no function made, no table built.
local take
if calls > 1 then
  take = function(zset, score)
    local list = {score, ticket}
    for i = 2, calls do
      list[#list + 1] = score
      list[#list + 1] = ticket .. '#' .. i
    end
    return redis.call('ZADD', zset, unpack(list))
  end
end

local bucket = -1
if rpm > 0 then
  if calls == 1 then redis.call('ZADD', KEYS[1], now, ticket) else take(KEYS[1], now) end
  redis.call('PEXPIRE', KEYS[1], WINDOW + 1000)
  used_req = used_req + calls
end
if tpm > 0 then
  redis.call('HINCRBY', KEYS[2], second, tokens)
  redis.call('PEXPIRE', KEYS[2], WINDOW + 2000)
  bucket = second
  used_tok = used_tok + tokens
end
local reserve = budget > 0 and cost > 0
if maxp > 0 or reserve then
  if calls == 1 then redis.call('ZADD', KEYS[3], now + ttl, ticket) else take(KEYS[3], now + ttl) end
  redis.call('PEXPIRE', KEYS[3], ttl + 1000)
end
if reserve then
  if in_flight == 0 then
    -- The first reservation in flight starts the sum afresh, float remainders and all.
    redis.call('HSET', KEYS[4], 'held:' .. period, ARGV[6])
  else
    redis.call('HINCRBYFLOAT', KEYS[4], 'held:' .. period, ARGV[6])
  end
  redis.call('HSET', KEYS[4], 'h:' .. ticket, period .. ' ' .. ARGV[6])
end
return {0, 0, used_req, req_reset, used_tok, tok_reset, bucket}
