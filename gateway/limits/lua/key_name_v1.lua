-- key_name_v1: the claim on a key name; names are unique among keys.
-- A claim's value is '<key id>:<writer token>' (or a bare key id). A writer takes it
-- pending (it expires by itself, so a writer that dies midway leaves nothing behind),
-- then writes the key's record, then makes the claim permanent.
-- KEYS: the name's claim (string). ARGV: op, then per op:
--   claim   value, pending_ms         -> 1, or {holder, holder's pttl (-1: permanent)}
--   take    value, pending_ms, stale  -> the same, replacing the claim 'stale'
--   confirm value                     -> 1; the claim, if still value's, is permanent
--   drop    value                     -> 1; the claim, if still value's, is gone
--   release key_id                    -> 1; the key's permanent claim (its record has
--                                        another name now) is gone
local holder = redis.call('GET', KEYS[1])
local op, arg = ARGV[1], ARGV[2]
if op == 'claim' or op == 'take' then
  if holder and holder ~= arg and not (op == 'take' and holder == ARGV[4]) then
    return {holder, redis.call('PTTL', KEYS[1])}
  end
  redis.call('SET', KEYS[1], arg, 'PX', ARGV[3])
  return 1
end
if not holder then
  return 1
end
if op == 'confirm' and holder == arg then
  redis.call('PERSIST', KEYS[1])
elseif op == 'drop' and holder == arg then
  redis.call('DEL', KEYS[1])
elseif op == 'release' and (holder == arg or string.sub(holder, 1, #arg + 1) == arg .. ':')
    and redis.call('PTTL', KEYS[1]) == -1 then
  redis.call('DEL', KEYS[1])
end
return 1
