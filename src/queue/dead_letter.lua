-- Moves a queue entry that can never start into the workflow's dead-letter stream, with
-- the reason, and marks its request dead-lettered (dropping the mark of an EXPRESS start
-- attempt: a replay is a new delivery); atomically.
-- Keys and arguments: `DeadLetter` in scripts.rs. The index maps an index field (the
-- request id, or "entry:<id>" for an unreadable entry) to the dead-letter entry id.
-- Returns 1 when this call moved the entry, 0 when another delivery already had; the call
-- that moves it writes the `dead_lettered` audit event into the workflow's outbox with it.
local acked = redis.call('XACK', queue, group, entry_id)
local found = redis.call('XRANGE', queue, entry_id, entry_id)
if acked == 0 or #found == 0 then
  redis.call('XDEL', queue, entry_id)
  return 0
end
local fields = found[1][2]
table.insert(fields, 'reason'); table.insert(fields, reason)
table.insert(fields, 'dead_lettered_at'); table.insert(fields, now)
table.insert(fields, 'queue_entry'); table.insert(fields, entry_id)
local dead = redis.call('XADD', dead_letters, '*', unpack(fields))
redis.call('HSET', dead_letter_index, index_field, dead)
redis.call('XDEL', queue, entry_id)
redis.call('DEL', attempt)
if event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
local current = redis.pcall('GET', status)
if type(current) == 'string' then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' then
    record.s, record.u, record.e = 'dead_lettered', tonumber(now_ms), reason
    local encoded, json = pcall(cjson.encode, record)
    if encoded then redis.call('SET', status, json, 'KEEPTTL') end
  end
elseif redis.call('TYPE', legacy_status).ok == 'hash' then
  redis.call('HSET', legacy_status, 'status', 'dead_lettered', 'updated_at', now, 'error', reason)
end
return 1
