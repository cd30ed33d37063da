-- Moves due deferred triggers into the workflow's queue, atomically per batch (replicas may
-- run it concurrently; Redis serializes them, so nothing moves twice).
-- KEYS[1] deferred set (score: due time, ms), KEYS[2] deferred entries hash, KEYS[3] queue
-- ARGV[1] batch size. Returns how many moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', now, 'LIMIT', 0, tonumber(ARGV[1]))
for _, request_id in ipairs(due) do
  local fields = redis.call('HGET', KEYS[2], request_id)
  if fields then
    local entry = cjson.decode(fields)
    redis.call('XADD', KEYS[3], '*', 'request_id', request_id, 'input', entry.input,
      'owner', entry.owner, 'client_id', entry.client_id, 'accepted_at', entry.accepted_at,
      'http_request_id', entry.http_request_id or '', 'trace_header', entry.trace_header or '',
        'traceparent', entry.traceparent or '')
    redis.call('HDEL', KEYS[2], request_id)
  end
  redis.call('ZREM', KEYS[1], request_id)
end
return #due
