-- Appends chained records to the audit trail, if the trail's head is the one they were
-- chained on (compare-and-set): writers in several processes share one chain without a fork.
-- A batch is appended at most once: a writer retrying after an ambiguous failure (a timeout
-- after Redis ran the script) finds its batch id and is told 'done'.
-- Keys and arguments: `Append` in scripts.rs (all keys in the {audit} slot); `records` are
-- body, signature pairs in chain order; an empty `checkpoint_body` means no checkpoint.
-- Relaying an outbox (`outbox` not ''): the records are its entries after `outbox_after`
-- up to `outbox_last`, appended only if `outbox_after` is still the last entry chained
-- (else another writer chained them: 'relayed'), and the mark moves with them: each outbox
-- event is chained exactly once.
if redis.call('GET', writer_batch) == batch_id then
  return {'done'}
end
if outbox ~= '' and (redis.call('HGET', relayed, outbox) or '') ~= outbox_after then
  return {'relayed'}
end
local current = redis.call('HMGET', head, 'seq', 'hash', 'kid', 'frontier', 'cp', 'cpt')
local seq = current[1] or '0'
if seq ~= expected_seq or (seq ~= '0' and current[2] ~= expected_hash) then
  return {'conflict', seq, current[2] or '', current[3] or '', current[4] or '', current[5] or '0',
          current[6] or '0'}
end
for i = 1, #records, 2 do
  redis.call('XADD', log, '*', 'body', records[i], 'sig', records[i + 1])
end
redis.call('HSET', head, 'seq', new_seq, 'hash', new_hash, 'kid', kid, 'frontier', frontier)
if checkpoint_body ~= '' then
  redis.call('XADD', checkpoints, '*', 'body', checkpoint_body, 'sig', checkpoint_sig)
  redis.call('HSET', head, 'cp', new_seq, 'cpt', now_ms)
end
if outbox ~= '' then
  redis.call('HSET', relayed, outbox, outbox_last)
end
redis.call('SET', writer_batch, batch_id, 'EX', 86400)
return {'ok'}
