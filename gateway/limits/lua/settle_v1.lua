-- settle_v1: reconcile one admitted request and record its usage, atomically.
-- KEYS: tpm, leases, spend, usage (hash "day|model|counter" -> n), meta (hash);
--       all share the key's hash tag.
-- ARGV: ticket, has_lease (0/1), bucket (-1 = none), token_delta, reserved_period,
--       reserved_cost, cost, day, model, input_tokens, output_tokens, error (0/1),
--       day_period, month_period
local t = redis.call('TIME')
if ARGV[2] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end

local bucket, delta = tonumber(ARGV[3]), tonumber(ARGV[4])
if bucket >= 0 and delta ~= 0 and redis.call('HEXISTS', KEYS[1], bucket) == 1 then
  if redis.call('HINCRBY', KEYS[1], bucket, delta) < 0 then redis.call('HSET', KEYS[1], bucket, 0) end
end

local reserved, cost = tonumber(ARGV[6]), tonumber(ARGV[7])
if ARGV[5] ~= '' and reserved > 0 then
  if tonumber(redis.call('HINCRBYFLOAT', KEYS[3], ARGV[5], -reserved)) < 0 then
    redis.call('HSET', KEYS[3], ARGV[5], 0)
  end
end
if cost > 0 then
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[13], ARGV[7])
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[14], ARGV[7])
  redis.call('HINCRBYFLOAT', KEYS[3], 'total', ARGV[7])
end

local row = ARGV[8] .. '|' .. ARGV[9] .. '|'
redis.call('HINCRBY', KEYS[4], row .. 'requests', 1)
redis.call('HINCRBY', KEYS[4], row .. 'input_tokens', ARGV[10])
redis.call('HINCRBY', KEYS[4], row .. 'output_tokens', ARGV[11])
if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[4], row .. 'cost_usd', ARGV[7]) end
if ARGV[12] == '1' then redis.call('HINCRBY', KEYS[4], row .. 'errors', 1) end
redis.call('HSET', KEYS[5], 'last_used_at', t[1])
return 1
