-- Drops a dead letter for good and marks its request failed; atomically.
-- Keys and arguments: `Purge` in scripts.rs.
-- The purge's audit event (`event`, sealed by `mac`; '' with the audit off) goes into the
-- workflow's outbox with the drop.
-- Returns 1 when a dead letter was dropped, 0 when there is none.
local dead = redis.call('HGET', dead_letter_index, index_field)
if not dead then return 0 end
redis.call('HDEL', dead_letter_index, index_field)
local removed = redis.call('XDEL', dead_letters, dead)
if removed == 1 and redis.call('EXISTS', request_status) == 1 then
  local reason = redis.call('HGET', request_status, 'error') or 'dead-lettered'
  redis.call('HSET', request_status, 'status', 'failed', 'updated_at', now,
    'error', 'purged from the dead letters: ' .. reason)
end
if removed == 1 and event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
return removed
