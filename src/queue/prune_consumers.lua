-- Removes the group's consumers idle at least min_idle_ms with no entry pending (stopped
-- processes: each process has a consumer name of its own), except `keep`. Checked and
-- removed in one step, so a consumer that reads an entry meanwhile is never removed (its
-- pending entries would become unclaimable).
-- Keys and arguments: `PruneConsumers` in scripts.rs. Returns how many were removed.
local consumers = redis.pcall('XINFO', 'CONSUMERS', queue, group)
if consumers.err then
  -- No stream or no group yet: no consumers.
  return 0
end
local removed = 0
for _, consumer in ipairs(consumers) do
  local info = {}
  for i = 1, #consumer, 2 do
    info[consumer[i]] = consumer[i + 1]
  end
  if info.name ~= keep and info.pending == 0 and info.idle >= tonumber(min_idle_ms) then
    redis.call('XGROUP', 'DELCONSUMER', queue, group, info.name)
    removed = removed + 1
  end
end
return removed
