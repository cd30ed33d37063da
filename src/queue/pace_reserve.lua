-- Drain pacing: at most `starts` StartExecution calls reach Step Functions in any window.
-- A permit's score is the latest time its call can reach the service: while the call is in
-- flight, its issue time plus the call's bound; once answered, the time of the answer
-- (pace_settle.lua). Counting every permit scored within the last window then bounds
-- arrivals exactly, however long calls take on the way (no safety margin needed).
-- Keys and arguments: `PaceReserve` in scripts.rs. Returns 0 when granted, else the ms to
-- wait.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local limit, span, bound = tonumber(starts), tonumber(window_ms), tonumber(bound_ms)
redis.call('ZREMRANGEBYSCORE', window, '-inf', now - span)
if redis.call('ZCARD', window) >= limit then
  local oldest = redis.call('ZRANGE', window, 0, 0, 'WITHSCORES')
  return math.max(1, tonumber(oldest[2]) + span - now)
end
redis.call('ZADD', window, now + bound, member)
redis.call('PEXPIRE', window, span + bound)
return 0
