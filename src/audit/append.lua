-- Appends chained records to the audit trail, if the trail's head is the one they were
-- chained on (compare-and-set): writers in several processes share one chain without a fork.
-- KEYS[1] head hash, KEYS[2] log stream (same slot)
-- ARGV: expected seq ('0' = empty trail), expected head hash, new seq, new head hash,
--       then body, signature pairs in order
local head = redis.call('HMGET', KEYS[1], 'seq', 'hash')
local seq = head[1] or '0'
local hash = head[2] or ''
if seq ~= ARGV[1] or (seq ~= '0' and hash ~= ARGV[2]) then
  return {'conflict', seq, hash}
end
for i = 5, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'body', ARGV[i], 'sig', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[3], 'hash', ARGV[4])
return {'ok'}
