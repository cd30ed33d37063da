-- Reserves one admission in a sliding window (at most `requests` in any `period_ms`).
-- Keys and arguments: `Reserve` in scripts.rs; the window is a sorted set of admission times.
-- Returns {'ok', remaining, reset_ms} or {'limited', retry_ms}. Refund with ZREM member.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local most, period = tonumber(requests), tonumber(period_ms)
redis.call('ZREMRANGEBYSCORE', window, '-inf', now - period)
if redis.call('ZCARD', window) >= most then
  local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
  return {'limited', tostring(tonumber(oldest[2]) + period - now)}
end
redis.call('ZADD', window, now, member)
redis.call('PEXPIRE', window, period)
local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
return {'ok', tostring(most - redis.call('ZCARD', window)), tostring(tonumber(oldest[2]) + period - now)}
