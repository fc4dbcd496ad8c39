-- key_record_v1: replace a key's record only if it is still the one the caller read,
-- so that concurrent PATCHes of one key each apply to the other's result (the caller
-- reads again and retries on 0) and no change is lost.
-- KEYS: meta (hash: record, last_used_at). ARGV: the record as read, the new record.
-- Returns 1 replaced, 0 changed (or gone) meanwhile.
if redis.call('HGET', KEYS[1], 'record') ~= ARGV[1] then
  return 0
end
redis.call('HSET', KEYS[1], 'record', ARGV[2])
return 1
