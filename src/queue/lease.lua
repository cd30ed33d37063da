-- Takes one of `max` leases (a start in flight), shared by every replica.
-- KEYS[1] the leases (sorted set; score: expiry, ms); ARGV: member, max, ttl_ms
-- Returns 0 when taken, else how long (ms) until the oldest lease expires at the latest.
-- A lease is released with ZREM; one whose holder died expires by itself.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[2]) then
  local first = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(first[2]) - now)
end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[3]), ARGV[1])
redis.call('PEXPIRE', KEYS[1], tonumber(ARGV[3]))
return 0
