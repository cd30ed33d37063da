-- Puts a dead letter back into the workflow's queue with its original fields (so the same
-- request id, hence the same execution name), and marks its request queued; atomically.
-- Keys and arguments: `Replay` in scripts.rs.
-- The `replayed` audit event (`event`, sealed by `mac`; '' with the audit off) goes into the
-- workflow's outbox with the move.
-- Returns the new queue entry id, or false when there is no such dead letter.
local dead = redis.call('HGET', dead_letter_index, index_field)
if not dead then return false end
redis.call('HDEL', dead_letter_index, index_field)
local found = redis.call('XRANGE', dead_letters, dead, dead)
if #found == 0 then return false end
local fields, original = found[1][2], {}
for i = 1, #fields, 2 do
  local name = fields[i]
  if name ~= 'reason' and name ~= 'dead_lettered_at' and name ~= 'queue_entry' then
    table.insert(original, name); table.insert(original, fields[i + 1])
  end
end
local entry = redis.call('XADD', queue, '*', unpack(original))
redis.call('XDEL', dead_letters, dead)
local current = redis.pcall('GET', status)
if type(current) == 'string' then
  local ok, record = pcall(cjson.decode, current)
  if ok and type(record) == 'table' then
    record.s, record.u, record.e = 'queued', tonumber(now_ms), nil
    local encoded, json = pcall(cjson.encode, record)
    if encoded then redis.call('SET', status, json, 'KEEPTTL') end
  end
elseif redis.call('TYPE', legacy_status).ok == 'hash' then
  redis.call('HSET', legacy_status, 'status', 'queued', 'updated_at', now)
  redis.call('HDEL', legacy_status, 'error')
end
if event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
return entry
