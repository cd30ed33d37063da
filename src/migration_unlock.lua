-- Releases the migration lock if this run still holds it (its token), so a run that
-- outlived the lock's expiry never frees another run's lock.
-- Keys and arguments: `Unlock` in migrations.rs.
if redis.call('GET', lock) == token then
  return redis.call('DEL', lock)
end
return 0
