-- Appends chained records to the audit trail, if the trail's head is the one they were
-- chained on (compare-and-set): writers in several processes share one chain without a fork.
-- A batch is appended at most once: a writer retrying after an ambiguous failure (a timeout
-- after Redis ran the script) finds its batch id and is told 'done'.
-- KEYS[1] head, KEYS[2] log stream, KEYS[3] checkpoint stream, KEYS[4] this writer's last
--         batch id (all in the {audit} slot)
-- ARGV: [1] expected seq ('0' = empty trail), [2] expected head hash, [3] batch id,
--       [4] new seq, [5] new head hash, [6] active key id, [7] Merkle frontier,
--       [8] checkpoint body ('' = none), [9] its signature, [10] now (unix ms),
--       then body, signature pairs in order
if redis.call('GET', KEYS[4]) == ARGV[3] then
  return {'done'}
end
local head = redis.call('HMGET', KEYS[1], 'seq', 'hash', 'kid', 'frontier', 'cp', 'cpt')
local seq = head[1] or '0'
if seq ~= ARGV[1] or (seq ~= '0' and head[2] ~= ARGV[2]) then
  return {'conflict', seq, head[2] or '', head[3] or '', head[4] or '', head[5] or '0',
          head[6] or '0'}
end
for i = 11, #ARGV, 2 do
  redis.call('XADD', KEYS[2], '*', 'body', ARGV[i], 'sig', ARGV[i + 1])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[4], 'hash', ARGV[5], 'kid', ARGV[6],
           'frontier', ARGV[7])
if ARGV[8] ~= '' then
  redis.call('XADD', KEYS[3], '*', 'body', ARGV[8], 'sig', ARGV[9])
  redis.call('HSET', KEYS[1], 'cp', ARGV[4], 'cpt', ARGV[10])
end
redis.call('SET', KEYS[4], ARGV[3], 'EX', 86400)
return {'ok'}
