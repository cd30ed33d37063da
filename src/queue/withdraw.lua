-- Takes back a trigger admitted held or deferred, whose audit record could not be written
-- (fail_closed): as if it had never been admitted, if it has not reached the queue yet.
-- KEYS: as enqueue.lua. ARGV[1] request id. Returns 1 if withdrawn, 0 if already released.
local id = ARGV[1]
if redis.call('ZREM', KEYS[9], id) == 0 and redis.call('ZREM', KEYS[7], id) == 0 then
  return 0
end
redis.call('HDEL', KEYS[8], id)
redis.call('DEL', KEYS[2])
-- Quota given back; a retry may use the idempotency key and the one-time token again.
redis.call('ZREM', KEYS[4], id)
redis.call('ZREM', KEYS[5], id)
if redis.call('HGET', KEYS[6], 'request_id') == id then
  redis.call('DEL', KEYS[6])
end
if redis.call('GET', KEYS[3]) == id then
  redis.call('DEL', KEYS[3])
end
return 1
