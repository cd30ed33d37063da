-- Records that a delivery started its execution and removes the entry, atomically.
-- KEYS[1] the workflow's queue stream, KEYS[2] the request's status hash (same slot).
-- ARGV: group, entry_id, status, updated_at, execution_arn
-- Returns 1 when this call acknowledged the entry, 0 when another delivery of the same entry
-- already had (so exactly one of them records the event in the audit trail).
-- An expired status hash is not recreated (it would never expire).
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
if acked == 1 and redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'status', ARGV[3], 'updated_at', ARGV[4], 'execution_arn', ARGV[5])
  redis.call('HDEL', KEYS[2], 'error')
end
redis.call('XDEL', KEYS[1], ARGV[2])
return acked
