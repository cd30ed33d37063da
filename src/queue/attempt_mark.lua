-- Marks that a delivery is about to call StartExecution for an EXPRESS request, and returns
-- what an earlier delivery left: '' (nothing, or only this delivery's own mark),
-- 'started:<execution arn>' (a start known to have succeeded whose completion was not
-- recorded) or another delivery's token (a start whose outcome is unknown, or one in flight
-- right now).
-- Keys and arguments: `MarkAttempt` in scripts.rs. With exclusive = '1' (at_most_once) an
-- earlier mark stays and this one is not set: the caller must not call. Otherwise
-- (at_least_once) this delivery's token replaces it. A 'started:' mark is never replaced.
-- One script, so two deliveries cannot both find the mark absent and both call.
local earlier = redis.call('GET', attempt)
-- This delivery's own mark (its clear failed, a mark call timed out after Redis ran it, or,
-- under at_least_once, its last call's outcome is unknown — which the caller counts): it
-- is no other delivery's attempt.
if earlier == token then
  earlier = false
end
if earlier and (exclusive == '1' or string.sub(earlier, 1, 8) == 'started:') then
  return earlier
end
redis.call('SET', attempt, token, 'EX', ttl_seconds)
return earlier or ''
