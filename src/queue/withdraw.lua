-- Takes back a trigger admitted held (fail_closed: immediate or deferred) whose audit
-- record could not be chained in time: as if it had never been admitted, if it is still
-- held (not released by a recovery that chained its record).
-- Keys: `AdmissionKeys` (as enqueue.lua); arguments: `Withdraw`, both in scripts.rs.
-- The `withdrawn` audit event (`event`, sealed by `mac`; '' with the audit off) goes into
-- the workflow's outbox with the withdrawal. Returns 1 if withdrawn, 0 if already released.
if redis.call('ZREM', held, request_id) == 0 then
  return 0
end
redis.call('HDEL', deferred_entries, request_id)
redis.call('DEL', status)
-- Quota given back; a retry may use the idempotency key and the one-time token again.
redis.call('ZREM', workflow_rate, request_id)
redis.call('ZREM', caller_rate, request_id)
if redis.call('HGET', idempotency, 'request_id') == request_id then
  redis.call('DEL', idempotency)
end
if redis.call('GET', used_token) == request_id then
  redis.call('DEL', used_token)
end
if event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
return 1
