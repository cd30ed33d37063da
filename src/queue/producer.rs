//! Admission: the checks a trigger must pass in Redis, and its write to the queue, as one
//! atomic script in the workflow's hash slot — so limits are exact across replicas, and a
//! refused trigger writes nothing. A caller's limit over all workflows lives in the caller's
//! own slot: it is reserved first and refunded when the workflow's script certainly did not
//! queue (never after an ambiguous failure such as a timeout: under-admit, never over-admit).

use std::time::Duration;

use crate::audit::outbox::{AdmissionEvents, SealedEvent};
use crate::redis_conn::{RedisConnection, refused_before_running};
use serde::Serialize;

use super::keys::Keys;
use super::request::QueuedRequest;
use super::scripts::{
    AdmissionKeys, Enqueue, EnqueueArgs, Reserve, ReserveArgs, ReserveKeys, Withdraw, WithdrawArgs,
};
use super::waiting::release_held;

/// A one-time token to consume together with the write.
#[derive(Debug, Clone)]
pub struct OneTimeToken {
    /// A digest identifying the token (issuer and `jti`).
    pub id: String,
    /// How long the token could still be presented (its remaining life plus leeway).
    pub ttl_seconds: u64,
}

/// Which window a rate limit counts in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LimitScope {
    /// All callers of the workflow.
    Workflow,
    /// One caller of the workflow (a digest of its identity).
    Caller(String),
    /// One caller over all workflows (a digest of its identity).
    CallerTotal(String),
}

/// A rate limit to check and count.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Limit {
    /// The policy's name in `RateLimit` headers.
    pub name: &'static str,
    pub scope: LimitScope,
    pub requests: u32,
    pub period: Duration,
}

/// A caller's `Idempotency-Key` for this trigger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdempotencyKey {
    /// Digest of the caller and the key.
    pub id: String,
    /// Digest of what was asked (the workflow and the body): a retry must ask the same.
    pub fingerprint: String,
    /// The same request's digest as versions before fingerprint v2 stored it (the workflow
    /// and the body's bytes): a retry of a request admitted before an upgrade is still
    /// recognised while its key lives (`idempotency_ttl_seconds`, a day by default). Drop it
    /// one release after v2.
    pub legacy_fingerprint: String,
    pub ttl_seconds: u64,
}

/// What a trigger must pass besides its authorization.
#[derive(Debug, Clone, Default)]
pub struct Admission {
    /// Hold the trigger until then (Unix ms); `None` queues it now.
    pub due_ms: Option<u64>,
    pub idempotency_key: Option<IdempotencyKey>,
    pub one_time_token: Option<OneTimeToken>,
    pub limits: Vec<Limit>,
    pub max_backlog: Option<u64>,
    /// Its audit events, written into the workflow's outbox with it.
    pub audit: AdmissionEvents,
}

/// Where a limit stands after an admission.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Quota {
    pub remaining: u32,
    /// Until the oldest counted admission leaves the window.
    pub reset: Duration,
}

/// Where an admitted trigger waits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placement {
    /// In the workflow's queue, at this stream entry.
    Queue { entry_id: String },
    /// Held until its due time; the drain's promotion moves it into the queue.
    Deferred,
    /// Held until its admitting process released it, once its audit record is written
    /// (`audit.fail_closed`), or until the drain recovers it.
    Held,
}

/// What admission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Written; where it waits, and each limit's quota, in `Admission::limits` order.
    Queued {
        placement: Placement,
        quotas: Vec<Quota>,
    },
    /// Nothing written: this idempotency key already queued this request.
    Duplicate { request_id: String },
    /// Nothing written: this idempotency key's request is still held for its audit record
    /// (`audit.fail_closed`), so it may yet be withdrawn.
    Pending { request_id: String },
    /// Nothing written: this idempotency key was used with another body.
    KeyReused,
    /// Nothing written: the one-time token was used before.
    Replayed,
    /// Nothing written: the queue holds `max_backlog` entries.
    Backlogged,
    /// Nothing written: the limit at this index (of `Admission::limits`) is exhausted.
    Limited { index: usize, retry_after: Duration },
}

#[derive(Serialize)]
struct Plan<'a> {
    request_id: String,
    owner: String,
    owner_digest: String,
    client_id: &'a str,
    accepted_at: &'a str,
    accepted_ms: u64,
    http_request_id: &'a str,
    trace_header: &'a str,
    traceparent: &'a str,
    status_ttl: u64,
    jti_ttl: u64,
    max_backlog: u64,
    limits: Vec<PlanLimit>,
    idempotency_fingerprint: &'a str,
    idempotency_legacy_fingerprint: &'a str,
    idempotency_ttl: u64,
    due_ms: u64,
    hold_ms: u64,
}

#[derive(Serialize)]
struct PlanLimit {
    window: PlanWindow,
    requests: u32,
    period_ms: u128,
}

/// Which of the script's windows a limit counts in.
#[derive(Serialize)]
#[serde(rename_all = "snake_case")]
enum PlanWindow {
    /// `AdmissionKeys::workflow_rate`
    Workflow,
    /// `AdmissionKeys::caller_rate`
    Caller,
}

/// Appends accepted triggers to the workflow queues.
#[derive(Clone)]
pub struct Producer {
    redis: RedisConnection,
    keys: Keys,
    status_ttl: Duration,
    /// With the audit failing closed: how long an immediate trigger is held for its
    /// admitting process to release it before the drain recovers it.
    hold: Option<Duration>,
}

impl Producer {
    pub fn new(
        redis: RedisConnection,
        keys: Keys,
        status_ttl: Duration,
        hold: Option<Duration>,
    ) -> Self {
        Self {
            redis,
            keys,
            status_ttl,
            hold,
        }
    }

    /// Queues a trigger admitted held, once its audit record is written.
    pub async fn release(&self, request: &QueuedRequest) -> redis::RedisResult<bool> {
        let id = &request.request_id;
        let moved = release_held(
            &mut self.redis.clone(),
            &self.keys,
            id.workflow(),
            &[id.to_string()],
        )
        .await?;
        Ok(moved == 1)
    }

    /// Takes back a held or deferred trigger (and its quota) whose audit record could not
    /// be chained in time, writing its `withdrawn` event; `false` if it was already released.
    pub async fn withdraw(
        &self,
        request: &QueuedRequest,
        admission: &Admission,
        withdrawn: Option<&SealedEvent>,
    ) -> redis::RedisResult<bool> {
        let request_id = request.request_id.to_string();
        let keys = self.admission_keys(request, admission).into();
        let (event, mac) = SealedEvent::args(withdrawn);
        let withdrawn: i64 = Withdraw::invocation(
            keys,
            &WithdrawArgs {
                request_id: &request_id,
                event,
                mac,
            },
        )
        .invoke_async(&mut self.redis.clone())
        .await?;
        if withdrawn == 1
            && let Some(LimitScope::CallerTotal(digest)) = admission
                .limits
                .iter()
                .map(|l| &l.scope)
                .find(|scope| matches!(scope, LimitScope::CallerTotal(_)))
        {
            let _: i64 = redis::cmd("ZREM")
                .arg(self.keys.caller_rate(digest))
                .arg(request.request_id.to_string())
                .query_async(&mut self.redis.clone())
                .await?;
        }
        Ok(withdrawn == 1)
    }

    /// The admission scripts' keys, all in the workflow's slot.
    fn admission_keys(&self, request: &QueuedRequest, admission: &Admission) -> AdmissionKeys {
        let id = &request.request_id;
        let workflow = id.workflow();
        let unused = || self.keys.unused(workflow);
        let has = |scope: fn(&LimitScope) -> bool| admission.limits.iter().any(|l| scope(&l.scope));
        let caller_digest = admission.limits.iter().find_map(|l| match &l.scope {
            LimitScope::Caller(digest) => Some(digest),
            _ => None,
        });
        AdmissionKeys {
            queue: self.keys.queue(workflow),
            dead_letters: self.keys.dead_letters(workflow),
            status: self.keys.status(id),
            used_token: admission
                .one_time_token
                .as_ref()
                .map_or_else(unused, |once| self.keys.used_token(workflow, &once.id)),
            workflow_rate: if has(|s| *s == LimitScope::Workflow) {
                self.keys.rate(workflow, "workflow")
            } else {
                unused()
            },
            caller_rate: caller_digest.map_or_else(unused, |digest| {
                self.keys.rate(workflow, &format!("caller:{digest}"))
            }),
            idempotency: admission
                .idempotency_key
                .as_ref()
                .map_or_else(unused, |k| self.keys.idempotency(workflow, &k.id)),
            deferred: self.keys.deferred(workflow),
            deferred_entries: self.keys.deferred_entries(workflow),
            held: if self.hold.is_some() {
                self.keys.held(workflow)
            } else {
                unused()
            },
            outbox: self.keys.audit_outbox(workflow),
        }
    }

    /// Checks `admission` and, if it passes, queues `request` with its `queued` status;
    /// returns once Redis has executed it.
    #[tracing::instrument(skip_all, name = "enqueue", fields(request.id = %request.request_id))]
    pub async fn enqueue(
        &self,
        request: &QueuedRequest,
        admission: &Admission,
    ) -> redis::RedisResult<Enqueued> {
        let total = admission
            .limits
            .iter()
            .enumerate()
            .find_map(|(i, limit)| match &limit.scope {
                LimitScope::CallerTotal(digest) => Some((i, limit, self.keys.caller_rate(digest))),
                _ => None,
            });
        let Some((total_index, total_limit, total_key)) = total else {
            return self.admit(request, admission).await;
        };
        let member = request.request_id.to_string();
        let reserve = ReserveArgs {
            member: &member,
            requests: total_limit.requests,
            period_ms: total_limit.period.as_millis() as u64,
        };
        let window = ReserveKeys {
            window: total_key.clone(),
        };
        let reply: Vec<String> = Reserve::invocation(window, &reserve)
            .invoke_async(&mut self.redis.clone())
            .await?;
        let total_quota = match reply.as_slice() {
            [status, remaining, reset_ms] if status == "ok" => Quota {
                remaining: remaining.parse().unwrap_or(0),
                reset: Duration::from_millis(reset_ms.parse().unwrap_or(0)),
            },
            [status, retry_ms] if status == "limited" => {
                let retry_after = Duration::from_millis(retry_ms.parse().unwrap_or(0));
                return Ok(Enqueued::Limited {
                    index: total_index,
                    retry_after,
                });
            }
            _ => return Err(unexpected_reply()),
        };
        match self.admit(request, admission).await {
            Ok(Enqueued::Queued {
                placement,
                mut quotas,
            }) => {
                quotas.insert(total_index.min(quotas.len()), total_quota);
                Ok(Enqueued::Queued { placement, quotas })
            }
            outcome => {
                // Give the reservation back only when the script certainly did not queue: it
                // answered (refused, a duplicate), or Redis refused the call before running
                // it. After a timeout or a dropped connection it may have run: keeping the
                // reservation under-admits by one, where a refund could over-admit.
                let certain = outcome.as_ref().err().is_none_or(refused_before_running);
                if !certain {
                    tracing::warn!(
                        "kept a caller rate-limit reservation: whether the trigger was queued is unknown"
                    );
                    return outcome;
                }
                let refund: redis::RedisResult<i64> = redis::cmd("ZREM")
                    .arg(&total_key)
                    .arg(&member)
                    .query_async(&mut self.redis.clone())
                    .await;
                if let Err(e) = refund {
                    tracing::warn!(error = %e, "could not refund a caller rate-limit reservation");
                }
                outcome
            }
        }
    }

    /// The workflow-slot part of admission: one atomic script.
    async fn admit(
        &self,
        request: &QueuedRequest,
        admission: &Admission,
    ) -> redis::RedisResult<Enqueued> {
        let id = &request.request_id;
        // The limits in the workflow's slot, with their index in `admission.limits`.
        let in_slot: Vec<(usize, &Limit)> = admission
            .limits
            .iter()
            .enumerate()
            .filter(|(_, l)| !matches!(l.scope, LimitScope::CallerTotal(_)))
            .collect();
        let plan = Plan {
            request_id: id.to_string(),
            owner: request.owner.to_string(),
            owner_digest: request.owner.digest(),
            client_id: request.client_id.as_deref().unwrap_or(""),
            accepted_at: &request.accepted_at,
            accepted_ms: crate::clock::unix_ms_from_rfc3339(&request.accepted_at),
            http_request_id: request.http_request_id.as_deref().unwrap_or(""),
            trace_header: request.trace_header.as_deref().unwrap_or(""),
            traceparent: request.traceparent.as_deref().unwrap_or(""),
            status_ttl: self.status_ttl.as_secs(),
            jti_ttl: admission
                .one_time_token
                .as_ref()
                .map_or(0, |once| once.ttl_seconds.max(1)),
            max_backlog: admission.max_backlog.unwrap_or(0),
            limits: in_slot
                .iter()
                .map(|(_, limit)| PlanLimit {
                    window: if limit.scope == LimitScope::Workflow {
                        PlanWindow::Workflow
                    } else {
                        PlanWindow::Caller
                    },
                    requests: limit.requests,
                    period_ms: limit.period.as_millis(),
                })
                .collect(),
            idempotency_fingerprint: admission
                .idempotency_key
                .as_ref()
                .map_or("", |k| k.fingerprint.as_str()),
            idempotency_legacy_fingerprint: admission
                .idempotency_key
                .as_ref()
                .map_or("", |k| k.legacy_fingerprint.as_str()),
            idempotency_ttl: admission
                .idempotency_key
                .as_ref()
                .map_or(0, |k| k.ttl_seconds.max(1)),
            due_ms: admission.due_ms.unwrap_or(0),
            hold_ms: self.hold.map_or(0, |hold| hold.as_millis() as u64),
        };
        let plan = serde_json::to_string(&plan).map_err(|e| {
            redis::RedisError::from((
                redis::ErrorKind::ClientError,
                "admission plan",
                e.to_string(),
            ))
        })?;
        let keys = self.admission_keys(request, admission);
        let (accepted_event, accepted_mac) = SealedEvent::args(admission.audit.accepted.as_ref());
        let (deferred_event, deferred_mac) = SealedEvent::args(admission.audit.deferred.as_ref());
        let args = EnqueueArgs {
            plan_json: &plan,
            input: &request.input,
            accepted_event,
            accepted_mac,
            deferred_event,
            deferred_mac,
        };
        let reply: Vec<String> = Enqueue::invocation(keys, &args)
            .invoke_async(&mut self.redis.clone())
            .await?;
        // The script numbers only the limits it was given.
        Ok(match parse_reply(&reply)? {
            Enqueued::Limited { index, retry_after } => Enqueued::Limited {
                index: in_slot.get(index).map_or(index, |(original, _)| *original),
                retry_after,
            },
            other => other,
        })
    }
}

fn parse_reply(reply: &[String]) -> redis::RedisResult<Enqueued> {
    let number = |s: &String| s.parse::<u64>().unwrap_or(0);
    match reply {
        [status, request_id] if status == "duplicate" => Ok(Enqueued::Duplicate {
            request_id: request_id.clone(),
        }),
        [status, request_id] if status == "pending" => Ok(Enqueued::Pending {
            request_id: request_id.clone(),
        }),
        [status] if status == "conflict" => Ok(Enqueued::KeyReused),
        [status] if status == "replayed" => Ok(Enqueued::Replayed),
        [status] if status == "backlog" => Ok(Enqueued::Backlogged),
        [status, index, retry_ms] if status == "limited" => Ok(Enqueued::Limited {
            index: (number(index) as usize).saturating_sub(1),
            retry_after: Duration::from_millis(number(retry_ms)),
        }),
        [status, placement, quotas @ ..] if status == "queued" => Ok(Enqueued::Queued {
            placement: match placement.as_str() {
                "deferred" => Placement::Deferred,
                "held" => Placement::Held,
                entry_id => Placement::Queue {
                    entry_id: entry_id.to_owned(),
                },
            },
            quotas: quotas
                .chunks(2)
                .map(|pair| Quota {
                    remaining: pair.first().map_or(0, |r| number(r) as u32),
                    reset: Duration::from_millis(pair.get(1).map_or(0, number)),
                })
                .collect(),
        }),
        _ => Err(unexpected_reply()),
    }
}

fn unexpected_reply() -> redis::RedisError {
    redis::RedisError::from((
        redis::ErrorKind::TypeError,
        "unexpected reply from an admission script",
    ))
}
