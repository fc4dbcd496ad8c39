-- standing_v1: where one gateway key stands against its limits now, for the admin API's
-- quota view. Read only: admit_v4's windows counted as admit_v4 counts them (an rpm entry
-- lives while its ms > now - 60 s, a tpm bucket while its second > now - 60, a lease while
-- its expiry > now), and nothing dropped, which the next admission does anyway.
-- KEYS: rpm, tpm, leases, spend (admit_v4's, one cluster slot)
-- ARGV: budget_period ('' = the key has no budget)
-- Returns {requests_used, requests_reset_ms, tokens_used, tokens_reset_ms, in_flight,
--          spent_usd, held_usd}; the two sums as strings (a Lua number would be truncated).
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local second = math.floor(now / 1000)
local WINDOW = 60000
local since = '(' .. (now - WINDOW)

local used_req = redis.call('ZCOUNT', KEYS[1], since, '+inf')
local req_reset = 0
if used_req > 0 then
  local oldest = redis.call('ZRANGEBYSCORE', KEYS[1], since, '+inf', 'WITHSCORES', 'LIMIT', 0, 1)
  req_reset = tonumber(oldest[2]) + WINDOW - now
end

local used_tok, oldest_second = 0, nil
local flat = redis.call('HGETALL', KEYS[2])
for i = 1, #flat, 2 do
  local s = tonumber(flat[i])
  if s > second - 60 then
    used_tok = used_tok + tonumber(flat[i + 1])
    if oldest_second == nil or s < oldest_second then oldest_second = s end
  end
end
local tok_reset = oldest_second and ((oldest_second + 60) * 1000 - now) or 0

local in_flight = redis.call('ZCOUNT', KEYS[3], '(' .. now, '+inf')

local spent, held = '0', '0'
if ARGV[1] ~= '' then
  spent = redis.call('HGET', KEYS[4], ARGV[1]) or '0'
  if in_flight > 0 then held = redis.call('HGET', KEYS[4], 'held:' .. ARGV[1]) or '0' end
end
return {used_req, req_reset, used_tok, tok_reset, in_flight, spent, held}
