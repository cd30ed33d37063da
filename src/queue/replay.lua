-- Puts a dead letter back into the workflow's queue with its original fields (so the same
-- request id, hence the same execution name), and marks its request queued; atomically.
-- KEYS[1] dead-letter stream, KEYS[2] dead-letter index, KEYS[3] queue, KEYS[4] status hash
-- ARGV: index field, now (RFC 3339)
-- Returns the new queue entry id, or false when there is no such dead letter.
local dead = redis.call('HGET', KEYS[2], ARGV[1])
if not dead then return false end
redis.call('HDEL', KEYS[2], ARGV[1])
local found = redis.call('XRANGE', KEYS[1], dead, dead)
if #found == 0 then return false end
local fields, original = found[1][2], {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name ~= 'reason' and name ~= 'dead_lettered_at' and name ~= 'queue_entry' then
    table.insert(original, name); table.insert(original, fields[i + 1])
  end
end
local entry = redis.call('XADD', KEYS[3], '*', unpack(original))
redis.call('XDEL', KEYS[1], dead)
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'status', 'queued', 'updated_at', ARGV[2])
  redis.call('HDEL', KEYS[4], 'error')
end
return entry
