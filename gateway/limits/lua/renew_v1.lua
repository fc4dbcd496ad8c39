-- renew_v1: push back the expiry of a key's leases that are still held.
-- KEYS: leases (zset). ARGV: lease_ttl_ms, ticket...
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ttl = tonumber(ARGV[1])
for i = 2, #ARGV do
  redis.call('ZADD', KEYS[1], 'XX', now + ttl, ARGV[i])
end
redis.call('PEXPIRE', KEYS[1], ttl + 1000)
return 1
