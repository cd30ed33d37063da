-- Deletes exported, checkpointed records from the front of the stream and moves the trim
-- marker (seq, hash, Merkle frontier and active key of the last deleted record) with them,
-- if no other trimmer moved it first (compare-and-set on the marker's seq).
-- KEYS[1] trim marker, KEYS[2] record stream (same slot)
-- ARGV: [1] expected marker seq, [2] new seq, [3] hash, [4] frontier, [5] kid, then entry ids
local seq = redis.call('HGET', KEYS[1], 'seq') or '0'
if seq ~= ARGV[1] then
  return 0
end
for i = 6, #ARGV do
  redis.call('XDEL', KEYS[2], ARGV[i])
end
redis.call('HSET', KEYS[1], 'seq', ARGV[2], 'hash', ARGV[3], 'frontier', ARGV[4], 'kid', ARGV[5])
return 1
