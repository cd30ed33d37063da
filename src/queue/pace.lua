-- Drain pacing: at most `starts` StartExecution calls reach Step Functions in any window.
-- A permit's score is the latest time its call can reach the service: while the call is in
-- flight, its issue time plus the call's bound; once answered, the time of the answer
-- ('settle'). Counting every permit scored within the last window then bounds arrivals
-- exactly, however long calls take on the way (no safety margin needed).
-- KEYS[1] the window (sorted set)
-- ARGV[1] 'reserve': ARGV member, starts, window_ms, bound_ms -> 0 when granted, else ms to wait
-- ARGV[1] 'settle':  ARGV member                              -> 1 when the permit was there
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if ARGV[1] == 'settle' then
  return redis.call('ZADD', KEYS[1], 'XX', 'CH', now, ARGV[2])
end
local starts, window, bound = tonumber(ARGV[3]), tonumber(ARGV[4]), tonumber(ARGV[5])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
if redis.call('ZCARD', KEYS[1]) >= starts then
  local oldest = redis.call('ZRANGE', KEYS[1], 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + window - now)
end
redis.call('ZADD', KEYS[1], now + bound, ARGV[2])
redis.call('PEXPIRE', KEYS[1], window + bound)
return 0
