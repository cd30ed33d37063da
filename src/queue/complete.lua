-- Records that a delivery started its execution and removes the entry, atomically.
-- Keys and arguments: `Complete` in scripts.rs (the request's status hash is in the queue's
-- slot). Returns 1 when this call acknowledged the entry, 0 when another delivery of the
-- same entry already had (so exactly one of them records the event in the audit trail).
-- An expired status hash is not recreated (it would never expire).
local acked = redis.call('XACK', queue, group, entry_id)
if acked == 1 and redis.call('EXISTS', request_status) == 1 then
  redis.call('HSET', request_status, 'status', state, 'updated_at', updated_at,
    'execution_arn', execution_arn)
  redis.call('HDEL', request_status, 'error')
end
redis.call('XDEL', queue, entry_id)
return acked
