-- Takes or renews the file exporter's lease: one exporter writes the files at a time.
-- Keys and arguments: `ExportLease` in scripts.rs. The lease holds `<holder> <token>`; a new
-- holder gets the next fencing token (INCR), larger than every earlier holder's. Returns
-- the token when `holder` holds the lease now, 0 when another does.
local current = redis.call('GET', lease)
if current == false then
  local token = redis.call('INCR', fence)
  redis.call('SET', lease, holder .. ' ' .. token, 'PX', ttl_ms)
  return token
end
local space = string.find(current, ' ', 1, true)
if space and string.sub(current, 1, space - 1) == holder then
  redis.call('PEXPIRE', lease, ttl_ms)
  return tonumber(string.sub(current, space + 1))
end
return 0
