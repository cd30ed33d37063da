-- Reserves one admission in a sliding window (at most `requests` in any `period_ms`).
-- KEYS[1] the window (a sorted set of admission times); ARGV: member, requests, period_ms
-- Returns {'ok', remaining, reset_ms} or {'limited', retry_ms}. Refund with ZREM member.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local requests, period = tonumber(ARGV[2]), tonumber(ARGV[3])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - period)
if redis.call('ZCARD', KEYS[1]) >= requests then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return {'limited', tostring(tonumber(oldest[2]) + period - now)}
end
redis.call('ZADD', KEYS[1], now, ARGV[1])
redis.call('PEXPIRE', KEYS[1], period)
local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
return {'ok', tostring(requests - redis.call('ZCARD', KEYS[1])), tostring(tonumber(oldest[2]) + period - now)}
