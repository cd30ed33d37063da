-- Records a delivery's outcome and removes the entry from the queue, atomically.
-- KEYS[1] the workflow's queue stream, KEYS[2] the request's status hash (same slot).
-- ARGV: group, entry_id, status, updated_at, field, value   (field: execution_arn | error)
-- An expired status hash is not recreated (it would never expire).
if redis.call('EXISTS', KEYS[2]) == 1 then
  redis.call('HSET', KEYS[2], 'status', ARGV[3], 'updated_at', ARGV[4], ARGV[5], ARGV[6])
end
redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
redis.call('XDEL', KEYS[1], ARGV[2])
return 1
