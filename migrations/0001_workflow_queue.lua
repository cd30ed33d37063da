-- scope: workflow
-- The workflow's queue stream and the workers' consumer group on it.
-- Keys and arguments: `queue` (the workflow's queue) and `group` (the consumer group's name).
-- Idempotent: an existing group is left as it is.
local reply = redis.pcall('XGROUP', 'CREATE', queue, group, '0', 'MKSTREAM')
if type(reply) == 'table' and reply.err and not string.find(reply.err, 'BUSYGROUP') then
  return reply
end
return 'OK'
