-- Admission of one trigger, atomically.
-- KEYS[1] the workflow's queue stream, KEYS[2] the request's status hash,
-- KEYS[3] (optional) the token's one-time marker — all in the workflow's slot.
-- ARGV: request_id, input, owner, client_id, accepted_at, status_ttl_seconds, [jti_ttl_seconds]
-- Returns the entry id, or 'replayed' when the one-time token was used before.
if KEYS[3] then
  if not redis.call('SET', KEYS[3], ARGV[1], 'NX', 'EX', ARGV[7]) then
    return 'replayed'
  end
end
local entry = redis.call('XADD', KEYS[1], '*',
  'request_id', ARGV[1], 'input', ARGV[2], 'owner', ARGV[3], 'client_id', ARGV[4], 'accepted_at', ARGV[5])
redis.call('HSET', KEYS[2], 'status', 'queued', 'owner', ARGV[3], 'created_at', ARGV[5], 'updated_at', ARGV[5])
redis.call('EXPIRE', KEYS[2], ARGV[6])
return entry
