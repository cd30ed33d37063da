-- Records the outcome of a delivery (started, or failed for good) and removes the entry,
-- atomically, with the mark of an EXPRESS start attempt.
-- Keys and arguments: `Complete` in scripts.rs (the request's status hash is in the queue's
-- slot; `execution_arn` and `failure` are '' when they do not apply). Returns 1 when this
-- call acknowledged the entry, 0 when another delivery of the same entry already had (so
-- exactly one of them records the event in the audit trail): the acknowledging call writes
-- the outcome's audit event (`event`, sealed by `mac`; '' with the audit off) into the
-- workflow's outbox, in the same step.
-- An expired status hash is not recreated (it would never expire).
local acked = redis.call('XACK', queue, group, entry_id)
if acked == 1 then
  redis.call('DEL', attempt)
  if event ~= '' then
    redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
  end
  if redis.call('EXISTS', request_status) == 1 then
    redis.call('HSET', request_status, 'status', state, 'updated_at', updated_at)
    if execution_arn ~= '' then
      redis.call('HSET', request_status, 'execution_arn', execution_arn)
    end
    if failure ~= '' then
      redis.call('HSET', request_status, 'error', failure)
    else
      redis.call('HDEL', request_status, 'error')
    end
  end
end
redis.call('XDEL', queue, entry_id)
return acked
