-- Records how far the exported files go (`seq`) with the fencing token of the exporter that
-- wrote them, if that token is still the newest: an exporter whose lease was taken over
-- (paused past its expiry, say) can no longer move the cursor, and stops.
-- Keys and arguments: `ExportCursor` in scripts.rs. Returns 1 when recorded.
if tonumber(redis.call('GET', fence) or '0') ~= tonumber(token) then
  return 0
end
redis.call('HSET', export, 'seq', seq, 'fence', token)
return 1
