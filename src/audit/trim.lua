-- Deletes exported, checkpointed records from the front of the stream and moves the trim
-- marker (seq, hash, Merkle frontier and active key of the last deleted record) with them,
-- if no other trimmer moved it first (compare-and-set on the marker's seq), and the
-- checkpoints before stream entry `keep_checkpoints_from` (the one vouching for the new
-- marker: verification of what stays needs it, and none before it).
-- Keys and arguments: `Trim` in scripts.rs (same slot); `entry_ids` are the records' ids.
-- Only the exporter holding the newest fencing token (`token`) trims: one that lost its
-- lease may be behind the files.
if tonumber(redis.call('GET', fence) or '0') ~= tonumber(token) then
  return 0
end
local current = redis.call('HGET', marker, 'seq') or '0'
if current ~= expected_seq then
  return 0
end
for _, id in ipairs(entry_ids) do
  redis.call('XDEL', log, id)
end
redis.call('XTRIM', checkpoints, 'MINID', keep_checkpoints_from)
redis.call('HSET', marker, 'seq', seq, 'hash', hash, 'frontier', frontier, 'kid', kid)
return 1
