-- Takes or renews the file exporter's lease: one exporter writes the files at a time.
-- Keys and arguments: `ExportLease` in scripts.rs. Returns 1 when `holder` holds it now.
local current = redis.call('GET', lease)
if current == false or current == holder then
  redis.call('SET', lease, holder, 'PX', ttl_ms)
  return 1
end
return 0
