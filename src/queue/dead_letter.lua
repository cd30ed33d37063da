-- Moves a queue entry that can never start into the workflow's dead-letter stream, with
-- the reason, and marks its request dead-lettered; atomically.
-- KEYS[1] queue stream, KEYS[2] dead-letter stream, KEYS[3] dead-letter index (hash:
-- request id -> dead-letter entry id), KEYS[4] the request's status hash (same slot).
-- ARGV: group, entry_id, index field (request id, or "entry:<id>" for an unreadable entry),
--       reason, now (RFC 3339)
-- Returns 1 when this call moved the entry, 0 when another delivery already had.
local acked = redis.call('XACK', KEYS[1], ARGV[1], ARGV[2])
local found = redis.call('XRANGE', KEYS[1], ARGV[2], ARGV[2])
if acked == 0 or #found == 0 then
  redis.call('XDEL', KEYS[1], ARGV[2])
  return 0
end
local fields = found[1][2]
table.insert(fields, 'reason'); table.insert(fields, ARGV[4])
table.insert(fields, 'dead_lettered_at'); table.insert(fields, ARGV[5])
table.insert(fields, 'queue_entry'); table.insert(fields, ARGV[2])
local dead = redis.call('XADD', KEYS[2], '*', unpack(fields))
redis.call('HSET', KEYS[3], ARGV[3], dead)
redis.call('XDEL', KEYS[1], ARGV[2])
if redis.call('EXISTS', KEYS[4]) == 1 then
  redis.call('HSET', KEYS[4], 'status', 'dead_lettered', 'updated_at', ARGV[5], 'error', ARGV[4])
end
return 1
