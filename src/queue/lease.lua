-- Takes one of `max` leases (a start in flight), shared by every replica.
-- Keys and arguments: `TakeLease` in scripts.rs; the leases are a sorted set scored by
-- expiry (ms). Returns 0 when taken, else how long (ms) until the oldest lease expires at
-- the latest. A lease is given back with ZREM; one whose holder died expires by itself.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', leases, '-inf', now)
if redis.call('ZCARD', leases) >= tonumber(max) then
  local first = redis.call('ZRANGE', leases, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(first[2]) - now)
end
redis.call('ZADD', leases, now + tonumber(ttl_ms), member)
redis.call('PEXPIRE', leases, tonumber(ttl_ms))
return 0
