-- scope: workflow
-- The workflow's queue stream and the workers' consumer group on it.
-- KEYS[1] = the workflow's queue; ARGV[1] = the consumer group's name.
-- Idempotent: an existing group is left as it is.
local reply = redis.pcall('XGROUP', 'CREATE', KEYS[1], ARGV[1], '0', 'MKSTREAM')
if type(reply) == 'table' and reply.err and not string.find(reply.err, 'BUSYGROUP') then
  return reply
end
return 'OK'
