-- Moves due deferred triggers into the workflow's queue, atomically per batch (replicas may
-- run it concurrently; Redis serializes them, so nothing moves twice).
-- Keys and arguments: `Promote` in scripts.rs (the deferred set is scored by due time, ms).
-- Returns how many moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', deferred, '-inf', now, 'LIMIT', 0, tonumber(batch))
for _, request_id in ipairs(due) do
  local fields = redis.call('HGET', deferred_entries, request_id)
  if fields then
    local entry = cjson.decode(fields)
    redis.call('XADD', queue, '*', 'request_id', request_id, 'input', entry.input,
      'owner', entry.owner, 'client_id', entry.client_id, 'accepted_at', entry.accepted_at,
      'http_request_id', entry.http_request_id or '', 'trace_header', entry.trace_header or '',
        'traceparent', entry.traceparent or '')
    redis.call('HDEL', deferred_entries, request_id)
  end
  redis.call('ZREM', deferred, request_id)
end
return #due
