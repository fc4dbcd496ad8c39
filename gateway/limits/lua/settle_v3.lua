-- settle_v3: reconcile one admitted request and record its usage, atomically.
-- v3 (over v2): the budget reservation is given back to the in-flight sum
-- ('held:<period>', see admit_v3), not to the settled spend, and the real cost is added
-- to the settled spend of the day, month and all time it was spent in. As in v2, what is
-- given back is what admit_v3 kept under the ticket ('h:<ticket>'), not what the caller
-- names: a caller whose admit reply was lost does not know whether there is one, and
-- settling twice gives it back once. Cache read and write tokens (parts of input_tokens)
-- get counters of their own, written only when not zero.
-- KEYS: tpm, leases, spend, usage (hash "day|model|counter" -> n), meta (hash);
--       all share the key's hash tag.
-- ARGV: ticket, release_lease (0/1), bucket (-1 = none), token_delta, refund (0/1),
--       cost, day, model, input_tokens, output_tokens, error (0/1), day_period,
--       month_period, cache_read_tokens, cache_write_tokens
local t = redis.call('TIME')

local bucket, delta = tonumber(ARGV[3]), tonumber(ARGV[4])
if bucket >= 0 and delta ~= 0 and redis.call('HEXISTS', KEYS[1], bucket) == 1 then
  if redis.call('HINCRBY', KEYS[1], bucket, delta) < 0 then redis.call('HSET', KEYS[1], bucket, 0) end
end

if ARGV[5] == '1' then
  local field = 'h:' .. ARGV[1]
  local reservation = redis.call('HGET', KEYS[3], field)
  if reservation then
    local period, usd = string.match(reservation, '^(%S+) (%S+)$')
    if tonumber(redis.call('HINCRBYFLOAT', KEYS[3], 'held:' .. period, '-' .. usd)) <= 0 then
      redis.call('HDEL', KEYS[3], 'held:' .. period)
    end
    redis.call('HDEL', KEYS[3], field)
  end
end
local cost = tonumber(ARGV[6])
if cost > 0 then
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[12], ARGV[6])
  redis.call('HINCRBYFLOAT', KEYS[3], ARGV[13], ARGV[6])
  redis.call('HINCRBYFLOAT', KEYS[3], 'total', ARGV[6])
end

local row = ARGV[7] .. '|' .. ARGV[8] .. '|'
redis.call('HINCRBY', KEYS[4], row .. 'requests', 1)
redis.call('HINCRBY', KEYS[4], row .. 'input_tokens', ARGV[9])
redis.call('HINCRBY', KEYS[4], row .. 'output_tokens', ARGV[10])
if cost > 0 then redis.call('HINCRBYFLOAT', KEYS[4], row .. 'cost_usd', ARGV[6]) end
if ARGV[11] == '1' then redis.call('HINCRBY', KEYS[4], row .. 'errors', 1) end
if ARGV[14] ~= '0' then redis.call('HINCRBY', KEYS[4], row .. 'cache_read_tokens', ARGV[14]) end
if ARGV[15] ~= '0' then redis.call('HINCRBY', KEYS[4], row .. 'cache_write_tokens', ARGV[15]) end
redis.call('HSET', KEYS[5], 'last_used_at', t[1])
-- Last: a Redis over its maxmemory lets a script that has written once write on, so the
-- first write must be one it refuses (an increment), not this release.
if ARGV[2] == '1' then redis.call('ZREM', KEYS[2], ARGV[1]) end
return 1
