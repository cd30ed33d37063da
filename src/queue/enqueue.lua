-- Admission of one trigger: every check, then every write, in one atomic step.
-- Keys: `AdmissionKeys` in scripts.rs, all in the workflow's slot (unused ones are the
-- never-written `unused` key). Arguments (`Enqueue`):
-- plan_json: {request_id, owner, owner_digest, client_id, accepted_at, accepted_ms,
--   http_request_id,
--   trace_header, traceparent ('' when absent), status_ttl,
--   jti_ttl (0: none), max_backlog (0: none), limits: [{window, requests, period_ms}]
--   (window: 'workflow' or 'caller'), idempotency_fingerprint ('': no key),
--   idempotency_legacy_fingerprint (what versions before fingerprint v2 stored),
--   idempotency_ttl, due_ms (0: now), hold_ms (0: none; else the trigger, deferred or not,
--   is held, invisible to the drain, until the admitting process releases it once its
--   audit record is chained, or withdraws it)}
-- input: the input, as received
-- accepted_event, accepted_mac: the trigger's `accepted` audit event, sealed for the
--   workflow's outbox ('' with the audit off); deferred_event, deferred_mac: its `deferred`
--   event ('' unless it asked for a time): written with the trigger, whichever this script
--   makes it (the caller's clock and Redis' may disagree on whether that time has come).
-- Returns {'queued', entry_id, remaining_1, reset_ms_1, ...} (one pair per limit; entry_id is
--   'deferred' for a trigger held until its due time (and for release, with hold_ms),
--   'held' for an immediate one held for release),
--   {'duplicate', request_id} (same key, same body), {'pending', request_id} (same key, same
--   body, the first still held: it may yet be withdrawn), {'conflict'} (same key, other body),
--   {'replayed'}, {'backlog'}, or {'limited', limit_index (1-based), retry_ms}.
local plan = cjson.decode(plan_json)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

-- A retry with the same idempotency key gets the first answer, before any other check.
if plan.idempotency_fingerprint ~= '' then
  local earlier = redis.call('HMGET', idempotency, 'request_id', 'fingerprint')
  if earlier[1] then
    if earlier[2] == plan.idempotency_fingerprint
        or earlier[2] == plan.idempotency_legacy_fingerprint then
      -- Still held for its audit record, it may yet be withdrawn: not an answer to give.
      if redis.call('ZSCORE', held, earlier[1]) then
        return {'pending', earlier[1]}
      end
      return {'duplicate', earlier[1]}
    end
    return {'conflict'}
  end
end
if plan.jti_ttl > 0 and redis.call('EXISTS', used_token) == 1 then
  return {'replayed'}
end
-- The backlog counts what waits: in the queue, for its time, for its record, and for an
-- operator (dead letters).
if plan.max_backlog > 0 and redis.call('XLEN', queue) + redis.call('ZCARD', deferred)
    + redis.call('ZCARD', held) + redis.call('XLEN', dead_letters) >= plan.max_backlog then
  return {'backlog'}
end
-- Sliding-window log: at most `requests` admissions in any `period_ms`, exactly. What the
-- check reads (the count and the oldest admission) also gives the quota left afterwards.
local counts, resets = {}, {}
for i, limit in ipairs(plan.limits) do
  local key = limit.window == 'workflow' and workflow_rate or caller_rate
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - limit.period_ms)
  local count = redis.call('ZCARD', key)
  local oldest = now
  if count > 0 then
    oldest = tonumber(redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')[2])
  end
  resets[i] = tostring(oldest + limit.period_ms - now)
  if count >= limit.requests then
    return {'limited', tostring(i), resets[i]}
  end
  counts[i] = count
end

if plan.jti_ttl > 0 then
  redis.call('SET', used_token, plan.request_id, 'EX', plan.jti_ttl)
end
local reply = {'queued', ''}
for i, limit in ipairs(plan.limits) do
  local key = limit.window == 'workflow' and workflow_rate or caller_rate
  redis.call('ZADD', key, now, plan.request_id)
  redis.call('PEXPIRE', key, limit.period_ms)
  -- Limits have distinct windows: each count grew by this admission only.
  table.insert(reply, tostring(limit.requests - counts[i] - 1))
  table.insert(reply, resets[i])
end
local state = 'queued'
-- `audited`: its admission event is in the outbox (entries of earlier versions lack it);
-- `due_ms`: when a held trigger is released, whether it waits among the deferred ones.
local function fields()
  return cjson.encode({input = input, owner = plan.owner, client_id = plan.client_id,
    accepted_at = plan.accepted_at, http_request_id = plan.http_request_id,
    trace_header = plan.trace_header, traceparent = plan.traceparent,
    audited = accepted_event ~= '', due_ms = plan.due_ms})
end
if plan.due_ms > now then
  state = 'deferred'
  reply[2] = 'deferred'
end
if plan.hold_ms > 0 then
  -- Every trigger, deferred or not, is held until its admitting process releases it (its
  -- record chained) or withdraws it; scored by when the drain may assume that process
  -- died and recover it. A deferred one due before then must not start either.
  if state ~= 'deferred' then
    reply[2] = 'held'
  end
  redis.call('ZADD', held, now + plan.hold_ms, plan.request_id)
  redis.call('HSET', deferred_entries, plan.request_id, fields())
elseif state == 'deferred' then
  -- Held in Redis until due; the drain's promote step moves it into the queue.
  redis.call('ZADD', deferred, plan.due_ms, plan.request_id)
  redis.call('HSET', deferred_entries, plan.request_id, fields())
else
  reply[2] = redis.call('XADD', queue, '*', 'request_id', plan.request_id, 'input', input,
    'owner', plan.owner, 'client_id', plan.client_id, 'accepted_at', plan.accepted_at,
    'http_request_id', plan.http_request_id, 'trace_header', plan.trace_header,
    'traceparent', plan.traceparent)
end
-- The status, compact (`StoredStatus` in request.rs): state, owner digest, creation time
-- and, when deferred, the due time. A deferred trigger's status lives status_ttl past its
-- due time, so it outlasts the wait (completion updates an existing status only, never
-- recreates an expired one).
local record = {s = state, o = plan.owner_digest, c = plan.accepted_ms}
local status_ttl = plan.status_ttl
if plan.due_ms > 0 then
  record.n = plan.due_ms
end
if state == 'deferred' then
  status_ttl = status_ttl + math.ceil((plan.due_ms - now) / 1000)
end
redis.call('SET', status, cjson.encode(record), 'EX', status_ttl)
-- The audit record goes with the admission: a crash after this script cannot lose it.
local event, mac = accepted_event, accepted_mac
if state == 'deferred' and deferred_event ~= '' then
  event, mac = deferred_event, deferred_mac
end
if event ~= '' then
  redis.call('XADD', outbox, '*', 'event', event, 'mac', mac)
end
if plan.idempotency_fingerprint ~= '' then
  redis.call('HSET', idempotency, 'request_id', plan.request_id, 'fingerprint', plan.idempotency_fingerprint)
  redis.call('EXPIRE', idempotency, plan.idempotency_ttl)
end
return reply
