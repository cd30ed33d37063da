-- Drops a delivery's mark of a start that certainly did not happen, only if the mark is
-- still that delivery's own: a mark another delivery set since may guard a call in flight.
-- Keys and arguments: `ClearAttempt` in scripts.rs. Returns 1 when it dropped the mark.
if redis.call('GET', attempt) == token then
  return redis.call('DEL', attempt)
end
return 0
