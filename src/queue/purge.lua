-- Drops a dead letter for good and marks its request failed; atomically.
-- KEYS[1] dead-letter stream, KEYS[2] dead-letter index, KEYS[3] status hash
-- ARGV: index field, now (RFC 3339)
-- Returns 1 when a dead letter was dropped, 0 when there is none.
local dead = redis.call('HGET', KEYS[2], ARGV[1])
if not dead then return 0 end
redis.call('HDEL', KEYS[2], ARGV[1])
local removed = redis.call('XDEL', KEYS[1], dead)
if removed == 1 and redis.call('EXISTS', KEYS[3]) == 1 then
  local reason = redis.call('HGET', KEYS[3], 'error') or 'dead-lettered'
  redis.call('HSET', KEYS[3], 'status', 'failed', 'updated_at', ARGV[2],
    'error', 'purged from the dead letters: ' .. reason)
end
return removed
