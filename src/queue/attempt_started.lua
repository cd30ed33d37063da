-- Records that this delivery's marked start succeeded (`started:<execution arn>`), only if
-- the mark is still this delivery's: once another delivery completed the request (and
-- dropped the mark) or took the mark over, it is not recreated.
-- Keys and arguments: `MarkStarted` in scripts.rs. Returns 1 when recorded.
if redis.call('GET', attempt) == token then
  redis.call('SET', attempt, started, 'EX', ttl_seconds)
  return 1
end
return 0
