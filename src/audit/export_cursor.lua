-- Records how far the sink goes (`seq`), where it ends (`sink`: `files`, or the key of the S3
-- segment ending at `seq`), and the fencing token of the exporter that wrote it, if that
-- token is still the newest: an exporter whose lease was taken over (paused past its
-- expiry, say) can no longer move the cursor, and stops.
-- Keys and arguments: `ExportCursor` in scripts.rs. Returns 1 when recorded.
if tonumber(redis.call('GET', fence) or '0') ~= tonumber(token) then
  return 0
end
redis.call('HSET', export, 'seq', seq, 'fence', token, 'sink', sink)
return 1
