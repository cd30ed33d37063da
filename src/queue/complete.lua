-- Records the outcome of a delivery (started, or failed for good) and removes the entry,
-- atomically, with the mark of an EXPRESS start attempt.
-- Keys and arguments: `Complete` in scripts.rs (the request's status is in the queue's
-- slot; `execution_arn` and `failure` are '' when they do not apply; `stored_arn` is the
-- ARN as the compact status keeps it (see `StoredStatus`); `legacy_status` is the hash an
-- earlier version kept the status in, updated when that is where it is). Returns 1 when this
-- call acknowledged the entry, 0 when another delivery of the same entry already had (so
-- exactly one of them records the event in the audit trail): the acknowledging call writes
-- the outcome's audit event (`event`, sealed by `mac`; '' with the audit off) into the
-- workflow's outbox, in the same step.
-- An expired status is not recreated (it would never expire); one that is not a status
-- (a key of another type, or not JSON) is left as it is rather than failing the script
-- half-way (the same in the other scripts that update a status).
local acked = redis.call('XACK', queue, group, entry_id)
if acked == 1 then
  redis.call('DEL', attempt)
  if event ~= '' then
    redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
  end
  local current = redis.pcall('GET', status)
  if type(current) == 'string' then
    local ok, record = pcall(cjson.decode, current)
    if ok and type(record) == 'table' then
      record.s, record.u = state, tonumber(updated_ms)
      if stored_arn ~= '' then record.a = stored_arn end
      record.e = failure ~= '' and failure or nil
      -- Ended here: kept finished_ttl more seconds (the truth stays in Step Functions).
      local encoded, json = pcall(cjson.encode, record)
      if encoded then redis.call('SET', status, json, 'EX', finished_ttl) end
    end
  elseif redis.call('TYPE', legacy_status).ok == 'hash' then
    redis.call('HSET', legacy_status, 'status', state, 'updated_at', updated_at)
    if execution_arn ~= '' then
      redis.call('HSET', legacy_status, 'execution_arn', execution_arn)
    end
    if failure ~= '' then
      redis.call('HSET', legacy_status, 'error', failure)
    else
      redis.call('HDEL', legacy_status, 'error')
    end
  end
end
redis.call('XDEL', queue, entry_id)
return acked
