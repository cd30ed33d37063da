-- Drops a dead letter for good and marks its request failed; atomically.
-- Keys and arguments: `Purge` in scripts.rs.
-- The purge's audit event (`event`, sealed by `mac`; '' with the audit off) goes into the
-- workflow's outbox with the drop.
-- Returns 1 when a dead letter was dropped, 0 when there is none.
local dead = redis.call('HGET', dead_letter_index, index_field)
if not dead then return 0 end
redis.call('HDEL', dead_letter_index, index_field)
local removed = redis.call('XDEL', dead_letters, dead)
local current = removed == 1 and redis.pcall('GET', status)
if type(current) == 'string' then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' then
    local reason = record.e or 'dead-lettered'
    record.s, record.u, record.e = 'failed', tonumber(now_ms), 'purged from the dead letters: ' .. reason
    local encoded, json = pcall(cjson.encode, record)
    if encoded then redis.call('SET', status, json, 'KEEPTTL') end
  end
elseif removed == 1 and redis.call('TYPE', legacy_status).ok == 'hash' then
  local reason = redis.call('HGET', legacy_status, 'error') or 'dead-lettered'
  redis.call('HSET', legacy_status, 'status', 'failed', 'updated_at', now,
    'error', 'purged from the dead letters: ' .. reason)
end
if removed == 1 and event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
return removed
