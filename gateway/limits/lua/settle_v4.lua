-- settle_v4: reconcile one admission and record the usage of its calls, atomically.
-- v4 (over v3): one admission may settle several calls (hedges, retries that reached an
-- upstream, fan-out models), under its one lease. The caller sums them: the tpm bucket is
-- corrected by the difference between their tokens and the reservation, and their usage
-- comes as rows, one per day and model (calls of the same model and day added up). Their
-- cost is added to the spend of the day, month and all time each was spent in: summed by
-- the caller, as spend pairs; or, for the one call of the common case (spends = -1), from
-- its row, as v3 did, with no more arguments than v3. The lease's entries are released,
-- one per call admitted (admit_v4 names them '<ticket>', '<ticket>#2' ...). No rows at
-- all: the admission reached no upstream, only its reservations come back. Same keys,
-- fields and values as v3: v3 and v4 instances may share a Redis.
-- As in v3, the budget reservation is given back to the in-flight sum ('held:<period>')
-- from what admit kept under the ticket ('h:<ticket>'), not from what the caller names: a
-- caller whose admit reply was lost does not know whether there is one, and settling twice
-- gives it back once. Cache read and write tokens (parts of input_tokens) get counters of
-- their own, written only when not zero.
-- KEYS: tpm, leases, spend, usage (hash "day|model|counter" -> n), meta (hash);
--       all share the key's hash tag.
-- ARGV: ticket, lease_entries (0 = no lease), bucket (-1 = none), token_delta,
--       refund (0/1), spends (n >= 0, or -1: each row's cost counts in its day, its
--       month and all time), then n pairs: period, usd (added to that period's spend),
--       then rows of 9: day, model, requests, input_tokens, output_tokens, cost, errors,
--       cache_read_tokens, cache_write_tokens
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

local spends = tonumber(ARGV[6])
local rows = 7
if spends > 0 then
  rows = 7 + 2 * spends
  for i = 7, rows - 1, 2 do
    redis.call('HINCRBYFLOAT', KEYS[3], ARGV[i], ARGV[i + 1])
  end
end

for i = rows, #ARGV, 9 do
  local day, cost = ARGV[i], ARGV[i + 5]
  local priced = tonumber(cost) > 0
  if priced and spends < 0 then
    redis.call('HINCRBYFLOAT', KEYS[3], 'd' .. day, cost)
    redis.call('HINCRBYFLOAT', KEYS[3], 'm' .. string.sub(day, 1, 7), cost)
    redis.call('HINCRBYFLOAT', KEYS[3], 'total', cost)
  end
  local row = day .. '|' .. ARGV[i + 1] .. '|'
  redis.call('HINCRBY', KEYS[4], row .. 'requests', ARGV[i + 2])
  redis.call('HINCRBY', KEYS[4], row .. 'input_tokens', ARGV[i + 3])
  redis.call('HINCRBY', KEYS[4], row .. 'output_tokens', ARGV[i + 4])
  if priced then redis.call('HINCRBYFLOAT', KEYS[4], row .. 'cost_usd', cost) end
  if ARGV[i + 6] ~= '0' then redis.call('HINCRBY', KEYS[4], row .. 'errors', ARGV[i + 6]) end
  if ARGV[i + 7] ~= '0' then redis.call('HINCRBY', KEYS[4], row .. 'cache_read_tokens', ARGV[i + 7]) end
  if ARGV[i + 8] ~= '0' then redis.call('HINCRBY', KEYS[4], row .. 'cache_write_tokens', ARGV[i + 8]) end
end
redis.call('HSET', KEYS[5], 'last_used_at', t[1])
-- Last: a Redis over its maxmemory lets a script that has written once write on, so the
-- first write must be one it refuses (an increment), not this release.
local entries = tonumber(ARGV[2])
if entries == 1 then
  redis.call('ZREM', KEYS[2], ARGV[1])
elseif entries > 1 then
  local names = {ARGV[1]}
  for i = 2, entries do names[i] = ARGV[1] .. '#' .. i end
  redis.call('ZREM', KEYS[2], unpack(names))
end
return 1
