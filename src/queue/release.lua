-- Moves held triggers (see enqueue.lua's hold_ms) on, each only if it is still held:
-- released once, by whoever comes first (the admitting process or recovery). One whose
-- due time is still to come waits among the deferred triggers; the others enter the queue.
-- Keys and arguments: `Release` in scripts.rs. Returns how many moved.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local moved = 0
for _, request_id in ipairs(request_ids) do
  if redis.call('ZREM', held, request_id) == 1 then
    local fields = redis.call('HGET', deferred_entries, request_id)
    if fields then
      local entry = cjson.decode(fields)
      local due = tonumber(entry.due_ms) or 0
      if due > now then
        redis.call('ZADD', deferred, due, request_id)
      else
        redis.call('XADD', queue, '*', 'request_id', request_id, 'input', entry.input,
          'owner', entry.owner, 'client_id', entry.client_id, 'accepted_at', entry.accepted_at,
          'http_request_id', entry.http_request_id or '', 'trace_header', entry.trace_header or '',
          'traceparent', entry.traceparent or '')
        redis.call('HDEL', deferred_entries, request_id)
      end
      moved = moved + 1
    end
  end
end
return moved
