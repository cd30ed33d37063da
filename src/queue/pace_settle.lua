-- Settles a pacing permit (see pace_reserve.lua) at the time of its call's answer.
-- Keys and arguments: `PaceSettle` in scripts.rs. Returns 1 when the permit was there.
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
return redis.call('ZADD', window, 'XX', 'CH', now, member)
