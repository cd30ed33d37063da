-- Gives up the file exporter's lease if `holder` still holds it with `token`: on a graceful
-- stop, so the next exporter need not wait for the lease to expire.
-- Keys and arguments: `ReleaseExportLease` in scripts.rs. Returns 1 when released.
if redis.call('GET', lease) == holder .. ' ' .. token then
  redis.call('DEL', lease)
  return 1
end
return 0
