//! The drain: moves accepted triggers from the workflow queues into `StartExecution`.
//!
//! Exactly once per accepted request, even across crashes and redeliveries:
//! - an entry is acknowledged only after Step Functions answered for good;
//! - the execution name is the request id, so a redelivered entry meets
//!   `ExecutionAlreadyExists`, and the drain then compares the existing execution's input
//!   with the request's to tell "already started by us" from a genuine name clash;
//! - a delivery keeps retrying retryable failures (backoff with jitter) and renews its claim
//!   on the entry while it waits; entries of a consumer that died stop being renewed and any
//!   consumer takes them over (`XAUTOCLAIM`) once idle for `claim_idle_ms`;
//! - an entry that can never start as it is goes to the workflow's dead letters, atomically
//!   with its removal from the queue.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::Instrument;

use super::breaker::{Admit, Breakers};
use super::repeated::RepeatedFailures;
use super::sfn::{SfnError, StepFunctions, execution_arn};
use crate::audit::{AuditEvent, AuditLog, EventKind};
use crate::clock::now_rfc3339;
use crate::config::{DrainPacing, WorkerConfig};
use crate::domain::WorkflowName;
use crate::queue::consumer::{self, Delivery, Outcome};
use crate::queue::producer::{promote_due, release_held, stranded_held};
use crate::queue::{Keys, QueuedRequest, WORKERS_GROUP};
use crate::redis_conn::{RedisConnection, RedisEndpoint};

/// Entries read or claimed in one call at most.
const MAX_BATCH: usize = 64;
/// Longest single wait while paced (re-checked after it).
const PACING_POLL_MAX: Duration = Duration::from_millis(250);
/// How often a full in-flight cap is re-checked.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);
/// A lease outlives its call by this much before it expires on its own.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

static LEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../queue/lease.lua")));
static PACE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../queue/pace.lua")));

/// The pacing window: at most N starts per second.
const PACING_WINDOW_MS: u64 = 1_000;

/// What a call holds while it runs: an in-flight lease, and one permit (`member`) in each
/// pacing window; all given back by [`Drain::release`] once Step Functions answered.
#[derive(Debug, Default)]
struct Permits {
    lease: Option<String>,
    member: String,
    windows: Vec<String>,
}

/// How often due deferred triggers are moved into their queues (their start precision).
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// Longest pause of a reader held off by an open breaker (re-checked after it).
const BREAKER_POLL_MAX: Duration = Duration::from_secs(1);
/// Pause after a failed Redis read before the next, at most.
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

/// A workflow the drain serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainTarget {
    pub workflow: WorkflowName,
    pub state_machine_arn: String,
    /// The role to start executions with, if not the process's own.
    pub role_arn: Option<String>,
    pub pacing: DrainPacing,
}

/// Everything one drain needs; shared by its tasks.
pub struct Drain {
    pub redis_endpoint: RedisEndpoint,
    /// For completions and reclaim (non-blocking commands).
    pub redis: RedisConnection,
    pub keys: Keys,
    /// The workflows to serve; a configuration reload sends new ones.
    pub targets: watch::Receiver<Vec<DrainTarget>>,
    pub sfn: Arc<dyn StepFunctions>,
    pub audit: AuditLog,
    pub config: WorkerConfig,
    pub consumer: String,
    /// The account/region-wide pacing window and its starts per second, if any.
    pub account_pace: Option<(String, u32)>,
    /// One circuit breaker per state machine (shared with `/readyz`).
    pub breakers: Arc<Breakers>,
    /// `audit.fail_closed`: the write timeout for recovering held triggers whose admitting
    /// process stopped before releasing them.
    pub held_recovery: Option<Duration>,
    /// Repeated start failures, logged once per interval with a count.
    pub failures: RepeatedFailures,
}

impl Drain {
    /// Runs until `shutdown`; then stops reading and lets in-flight deliveries finish.
    /// Follows its targets: a reader per workflow starts when the workflow appears and
    /// stops when it goes (its entries stay in Redis) or its state machine changes.
    pub async fn run(self, shutdown: CancellationToken) {
        let drain = Arc::new(self);
        let permits = Arc::new(Semaphore::new(drain.config.max_in_flight));
        let tracker = TaskTracker::new();
        let mut loops = tokio::task::JoinSet::new();
        {
            let (drain, permits, tracker, shutdown) = (
                Arc::clone(&drain),
                Arc::clone(&permits),
                tracker.clone(),
                shutdown.clone(),
            );
            loops.spawn(async move { drain.reclaim_loop(permits, tracker, shutdown).await });
        }
        {
            let (drain, shutdown) = (Arc::clone(&drain), shutdown.clone());
            loops.spawn(async move { drain.promote_loop(shutdown).await });
        }
        tracing::info!(consumer = %drain.consumer, "drain started");
        let mut readers: HashMap<WorkflowName, (DrainTarget, CancellationToken)> = HashMap::new();
        let mut targets = drain.targets.clone();
        loop {
            let current = targets.borrow_and_update().clone();
            readers.retain(|_, (target, stop)| {
                let keep = current.contains(target);
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for target in current {
                if readers.contains_key(&target.workflow) {
                    continue;
                }
                let stop = shutdown.child_token();
                readers.insert(target.workflow.clone(), (target.clone(), stop.clone()));
                let (drain, permits, tracker) =
                    (Arc::clone(&drain), Arc::clone(&permits), tracker.clone());
                loops.spawn(async move { drain.read_loop(target, permits, tracker, stop).await });
            }
            tokio::select! {
                changed = targets.changed() => {
                    if changed.is_err() {
                        // No more reloads can come: serve these targets until shutdown.
                        shutdown.cancelled().await;
                        break;
                    }
                }
                () = shutdown.cancelled() => break,
            }
        }
        while loops.join_next().await.is_some() {}
        tracker.close();
        tracker.wait().await;
        tracing::info!(consumer = %drain.consumer, "drain stopped");
    }

    /// Reads one workflow's queue: first what this consumer name already holds (after a
    /// restart with a stable name), then new entries.
    async fn read_loop(
        self: Arc<Self>,
        target: DrainTarget,
        permits: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let queue = self.keys.queue(&target.workflow);
        let Some(mut redis) = self.blocking_connection(&shutdown).await else {
            return;
        };
        let mut own_pending_cursor = Some("0".to_owned());
        let mut pause = Duration::from_millis(100);
        while !shutdown.is_cancelled() {
            // While the breaker is open, new entries stay in Redis, unread.
            if let Some(wait) = self.breakers.hold_off(&target.state_machine_arn) {
                tokio::select! {
                    () = tokio::time::sleep(wait.min(BREAKER_POLL_MAX)) => {}
                    () = shutdown.cancelled() => return,
                }
                continue;
            }
            let Some(mut held) = acquire_batch(&permits, &shutdown).await else {
                return;
            };
            let block = self.config.block_ms as usize;
            let read = tokio::select! {
                read = consumer::read_from(&mut redis, &queue, &self.consumer, held.len(), block, own_pending_cursor.as_deref()) => read,
                () = shutdown.cancelled() => return,
            };
            match read {
                Ok(deliveries) => {
                    pause = Duration::from_millis(100);
                    if own_pending_cursor.is_some() {
                        own_pending_cursor = deliveries.last().map(|d| d.entry_id.clone());
                    }
                    self.dispatch(&target, deliveries, &mut held, &tracker, &shutdown);
                }
                Err(e) => {
                    if e.code() == Some("NOGROUP") {
                        // The stream or group vanished (e.g. Redis lost its data): recreate it.
                        let _ = consumer::ensure_group(&mut redis, &queue).await;
                        continue;
                    }
                    tracing::warn!(workflow = %target.workflow, error = %e, "queue read failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(READ_RETRY_MAX);
                }
            }
        }
    }

    /// Held triggers whose admitting process stopped before releasing them: each gets its
    /// `accepted` record (written, not just buffered) and only then goes to the queue, so
    /// nothing starts unaudited. Replicas may race; the release moves each once.
    async fn recover_held(
        &self,
        redis: &mut RedisConnection,
        target: &DrainTarget,
        deadline: Duration,
    ) {
        let stranded = match stranded_held(redis, &self.keys, &target.workflow, MAX_BATCH).await {
            Ok(stranded) => stranded,
            Err(e) => {
                tracing::warn!(workflow = %target.workflow, error = %e, "reading held triggers failed");
                return;
            }
        };
        let mut audited = Vec::with_capacity(stranded.len());
        for (request_id, fields) in stranded {
            let fields: serde_json::Value = fields
                .and_then(|f| serde_json::from_str(&f).ok())
                .unwrap_or_default();
            let mut event = AuditEvent::now(EventKind::Accepted);
            event.workflow = Some(target.workflow.to_string());
            event.request_id = Some(request_id.clone());
            set_owner(&mut event, fields["owner"].as_str().unwrap_or_default());
            event.http_request_id = fields["http_request_id"]
                .as_str()
                .filter(|id| !id.is_empty())
                .map(str::to_owned);
            event.client_id = fields["client_id"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_owned);
            event.input_sha256 = fields["input"]
                .as_str()
                .map(|input| crate::audit::record::sha256_hex(input.as_bytes()));
            event.reason = Some(
                "recovered: the admitting process stopped before releasing it (audit.fail_closed)"
                    .into(),
            );
            if self.audit.record_durably(event, deadline).await.is_err() {
                tracing::warn!(workflow = %target.workflow, "audit unavailable; held triggers stay held");
                break;
            }
            audited.push(request_id);
        }
        if let Err(e) = release_held(redis, &self.keys, &target.workflow, &audited).await {
            tracing::warn!(workflow = %target.workflow, error = %e, "releasing recovered triggers failed");
        }
    }

    /// Moves due deferred triggers into their queues, every [`PROMOTE_EVERY`].
    async fn promote_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut redis = self.redis.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(PROMOTE_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            let targets = self.targets.borrow().clone();
            for target in &targets {
                loop {
                    match promote_due(&mut redis, &self.keys, &target.workflow, MAX_BATCH).await {
                        Ok(moved) if moved == MAX_BATCH => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(workflow = %target.workflow, error = %e, "moving due deferred triggers failed");
                            break;
                        }
                    }
                }
                if let Some(deadline) = self.held_recovery {
                    self.recover_held(&mut redis, target, deadline).await;
                }
            }
        }
    }

    /// Periodically takes over entries left pending too long, by any consumer.
    async fn reclaim_loop(
        self: Arc<Self>,
        permits: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let every = Duration::from_millis((self.config.claim_idle_ms / 2).max(250));
        let mut redis = self.redis.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(every) => {}
                () = shutdown.cancelled() => return,
            }
            let targets = self.targets.borrow().clone();
            for target in &targets {
                if self.breakers.hold_off(&target.state_machine_arn).is_some() {
                    continue;
                }
                let queue = self.keys.queue(&target.workflow);
                let mut cursor = "0-0".to_owned();
                loop {
                    let Some(mut held) = acquire_batch(&permits, &shutdown).await else {
                        return;
                    };
                    let claimed = consumer::claim_stale(
                        &mut redis,
                        &queue,
                        &self.consumer,
                        self.config.claim_idle_ms,
                        &cursor,
                        held.len(),
                    )
                    .await;
                    match claimed {
                        Ok((next, deliveries)) => {
                            if !deliveries.is_empty() {
                                tracing::info!(workflow = %target.workflow, entries = deliveries.len(), "reclaimed stale entries");
                            }
                            self.dispatch(target, deliveries, &mut held, &tracker, &shutdown);
                            cursor = next;
                        }
                        Err(e) => {
                            if e.code() != Some("NOGROUP") {
                                tracing::warn!(workflow = %target.workflow, error = %e, "reclaim failed");
                            }
                            break;
                        }
                    }
                    if cursor == "0-0" {
                        break;
                    }
                }
            }
        }
    }

    /// Starts one task per delivery, each holding one of `held`'s permits.
    fn dispatch(
        self: &Arc<Self>,
        target: &DrainTarget,
        deliveries: Vec<Delivery>,
        held: &mut Vec<OwnedSemaphorePermit>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        for delivery in deliveries {
            let permit = held.pop();
            let (drain, target, shutdown) = (Arc::clone(self), target.clone(), shutdown.clone());
            tracker.spawn(async move {
                drain.deliver(&target, delivery, &shutdown).await;
                drop(permit);
            });
        }
    }

    /// Starts one entry's execution and records the outcome; on shutdown, leaves the entry
    /// pending for a later delivery.
    async fn deliver(
        &self,
        target: &DrainTarget,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let span =
            tracing::info_span!("deliver", workflow = %target.workflow, entry = %delivery.entry_id);
        // Before the span is first entered: entering starts it, with whatever parent it has.
        if let Ok(request) = &delivery.request {
            crate::telemetry::continue_trace(&span, request.traceparent.as_deref());
        }
        self.deliver_in_span(target, delivery, shutdown)
            .instrument(span)
            .await;
    }

    async fn deliver_in_span(
        &self,
        target: &DrainTarget,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let mut claim = Claim {
            queue: self.keys.queue(&target.workflow),
            entry_id: delivery.entry_id.clone(),
            renewed: Instant::now(),
            every: Duration::from_millis(self.config.claim_renewal_ms().max(1)),
        };
        let outcome = match &delivery.request {
            Err(problem) => {
                tracing::error!(problem = %problem, "unreadable queue entry; it can never start");
                Some(Outcome::DeadLettered {
                    reason: format!("unreadable queue entry: {problem}"),
                })
            }
            Ok(request) => {
                self.start_with_retries(target, request, &mut claim, shutdown)
                    .await
            }
        };
        let Some(outcome) = outcome else { return };
        let request = delivery.request.as_ref().ok();
        match self
            .complete_with_retries(target, request, &delivery.entry_id, &outcome)
            .await
        {
            Ok(true) => {}
            Ok(false) => {
                tracing::debug!("another delivery of this entry already recorded it");
                return;
            }
            Err(e) => {
                // Left pending: the redelivery meets ExecutionAlreadyExists and completes then.
                tracing::warn!(error = %e, "could not record the outcome; the entry will be redelivered");
                return;
            }
        }
        let kind = match outcome {
            Outcome::Started { .. } => EventKind::Started,
            Outcome::DeadLettered { .. } => EventKind::DeadLettered,
        };
        let mut event = request_event(kind, target, request);
        match outcome {
            Outcome::Started { execution_arn } => {
                crate::metrics::metrics()
                    .executions_started
                    .get_or_create(&crate::metrics::WorkflowLabels {
                        workflow: target.workflow.to_string(),
                    })
                    .inc();
                tracing::info!(execution.arn = %execution_arn, "execution started");
                event.execution_arn = Some(execution_arn);
            }
            Outcome::DeadLettered { reason } => {
                tracing::warn!(reason = %reason, "entry dead-lettered");
                event.reason = Some(reason);
            }
        }
        self.audit.record(event).await;
    }

    /// Calls Step Functions until the request started or can never start as it is.
    /// Retryable failures are retried with exponential backoff and jitter; once the entry is
    /// older than `retry_max_age_seconds`, the next failure dead-letters it. While the state
    /// machine's breaker is open, the entry waits (it stays pending, renewed, and nothing
    /// counts against it). `None` on shutdown, or when another consumer holds the entry now.
    async fn start_with_retries(
        &self,
        target: &DrainTarget,
        request: &QueuedRequest,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let arn = target.state_machine_arn.as_str();
        let mut backoff = Duration::from_millis(self.config.retry_initial_backoff_ms);
        let max_backoff = Duration::from_millis(self.config.retry_max_backoff_ms);
        let max_age = Duration::from_secs(self.config.retry_max_age_seconds);
        let mut attempt = 0u32;
        loop {
            let probe = loop {
                match self.breakers.admit(arn) {
                    Admit::Call => break false,
                    Admit::Probe => break true,
                    Admit::Wait(wait) => self.wait(wait, claim, shutdown).await?,
                }
            };
            let Some(permits) = self.pace(target, claim, shutdown).await else {
                if probe {
                    self.breakers.abandoned(arn);
                }
                return None;
            };
            let started = start_once(self.sfn.as_ref(), target, request).await;
            let mut systemic = false;
            self.release(target, permits).await;
            let error = match started {
                Ok(execution_arn) => {
                    self.breakers.succeeded(arn);
                    return Some(Outcome::Started { execution_arn });
                }
                Err(e @ (SfnError::Terminal(_) | SfnError::AlreadyExists)) => {
                    // The service answered; the request itself is the problem.
                    self.breakers.succeeded(arn);
                    return Some(Outcome::DeadLettered {
                        reason: e.to_string(),
                    });
                }
                Err(SfnError::Throttled(error)) => {
                    // Healthy but busy: slow down without judging the service.
                    if probe {
                        self.breakers.abandoned(arn);
                    }
                    error
                }
                Err(SfnError::Retryable(error)) => {
                    self.breakers.failed(arn);
                    error
                }
                Err(SfnError::Systemic(error)) => {
                    // Not the entry's fault: it waits however long the outage lasts.
                    self.breakers.failed(arn);
                    systemic = true;
                    error
                }
            };
            let age = entry_age(&claim.entry_id);
            if age > max_age && !systemic {
                return Some(Outcome::DeadLettered {
                    reason: format!(
                        "still failing {} s after it was queued (worker.retry_max_age_seconds = {}): {error}",
                        age.as_secs(),
                        max_age.as_secs()
                    ),
                });
            }
            attempt += 1;
            self.failures.note(arn, &error);
            let mut event = request_event(EventKind::Retried, target, Some(request));
            event.attempt = Some(attempt);
            event.reason = Some(error.to_string());
            self.audit.record(event).await;
            self.wait(jittered(backoff), claim, shutdown).await?;
            backoff = (backoff * 2).min(max_backoff);
        }
    }

    /// Waits `duration` while keeping the claim on the entry: renews it whenever due, so no
    /// other consumer takes over a live delivery. `None` on shutdown, or when the entry is no
    /// longer pending (another delivery of it finished).
    async fn wait(
        &self,
        duration: Duration,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<()> {
        let until = Instant::now() + duration;
        loop {
            if claim.renewed.elapsed() >= claim.every && !self.renew(claim).await {
                return None;
            }
            let now = Instant::now();
            if now >= until {
                return Some(());
            }
            let next_renewal = (claim.renewed + claim.every).max(now);
            tokio::select! {
                () = tokio::time::sleep_until(until.min(next_renewal).into()) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Resets the entry's idle time (`XCLAIM` to ourselves); `false` when it is no longer
    /// pending. A failed renewal is only logged: the delivery goes on.
    async fn renew(&self, claim: &mut Claim) -> bool {
        let renewed: redis::RedisResult<Vec<String>> = redis::cmd("XCLAIM")
            .arg(&claim.queue)
            .arg(WORKERS_GROUP)
            .arg(&self.consumer)
            .arg(0)
            .arg(&claim.entry_id)
            .arg("JUSTID")
            .query_async(&mut self.redis.clone())
            .await;
        claim.renewed = Instant::now();
        match renewed {
            Ok(ids) if ids.is_empty() => {
                tracing::info!("the entry is no longer pending; another delivery finished it");
                false
            }
            Ok(_) => true,
            Err(e) => {
                tracing::warn!(error = %e, "could not renew the claim on an entry");
                true
            }
        }
    }

    /// Waits for permission to call `StartExecution` for `target`: first an in-flight lease
    /// (if the workflow caps calls in flight), then a permit of the account/region window and
    /// of the workflow's window (each: at most N calls reach Step Functions in any second,
    /// shared by every replica; see `pace.lua`). Permits come last so that each is used at
    /// once: taken earlier, they would pile up while the service is slow and leave together,
    /// in a burst. `None` on shutdown.
    async fn pace(
        &self,
        target: &DrainTarget,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<Permits> {
        let mut redis = self.redis.clone();
        let mut permits = Permits {
            member: uuid::Uuid::new_v4().simple().to_string(),
            ..Permits::default()
        };
        if let Some(max) = target.pacing.max_in_flight {
            permits.lease = Some(
                self.take_lease(&mut redis, target, max, claim, shutdown)
                    .await?,
            );
        }
        let windows = [
            self.account_pace.clone(),
            target
                .pacing
                .starts_per_second
                .map(|rate| (self.keys.pace(&target.workflow), rate)),
        ];
        // A call may reach Step Functions until its bound has passed.
        let bound_ms = self.config.call_timeout_ms;
        for (key, starts_per_second) in windows.into_iter().flatten() {
            loop {
                let reserved: redis::RedisResult<u64> = PACE
                    .key(&key)
                    .arg("reserve")
                    .arg(&permits.member)
                    .arg(starts_per_second)
                    .arg(PACING_WINDOW_MS)
                    .arg(bound_ms)
                    .invoke_async(&mut redis)
                    .await;
                let wait = match reserved {
                    Ok(0) => break,
                    Ok(wait_ms) => Duration::from_millis(wait_ms),
                    Err(e) => {
                        tracing::warn!(error = %e, "drain pacing unavailable; waiting");
                        PACING_POLL_MAX
                    }
                };
                if self
                    .wait(wait.min(PACING_POLL_MAX), claim, shutdown)
                    .await
                    .is_none()
                {
                    self.release(target, permits).await;
                    return None;
                }
            }
            permits.windows.push(key);
        }
        Some(permits)
    }

    /// One of `max` in-flight leases of `target`, shared by every replica.
    async fn take_lease(
        &self,
        redis: &mut RedisConnection,
        target: &DrainTarget,
        max: u32,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Option<String> {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let ttl = Duration::from_millis(self.config.call_timeout_ms) + LEASE_MARGIN;
        loop {
            let taken: redis::RedisResult<u64> = LEASE
                .key(self.keys.in_flight(&target.workflow))
                .arg(&lease)
                .arg(max)
                .arg(ttl.as_millis() as u64)
                .invoke_async(redis)
                .await;
            let wait = match taken {
                Ok(0) => return Some(lease),
                Ok(_) => IN_FLIGHT_POLL,
                Err(e) => {
                    tracing::warn!(error = %e, "in-flight lease unavailable; waiting");
                    PACING_POLL_MAX
                }
            };
            self.wait(wait, claim, shutdown).await?;
        }
    }

    /// Gives back what a call held: the in-flight lease (one not given back expires by
    /// itself), and each pacing permit, settled at the time of the answer (one not settled
    /// counts until its call's bound).
    async fn release(&self, target: &DrainTarget, permits: Permits) {
        let mut redis = self.redis.clone();
        if let Some(lease) = permits.lease {
            let released: redis::RedisResult<i64> = redis::cmd("ZREM")
                .arg(self.keys.in_flight(&target.workflow))
                .arg(lease)
                .query_async(&mut redis)
                .await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "could not release an in-flight lease; it will expire");
            }
        }
        for window in permits.windows {
            let settled: redis::RedisResult<i64> = PACE
                .key(window)
                .arg("settle")
                .arg(&permits.member)
                .invoke_async(&mut redis)
                .await;
            if let Err(e) = settled {
                tracing::debug!(error = %e, "could not settle a pacing permit; it counts until its bound");
            }
        }
    }

    async fn complete_with_retries(
        &self,
        target: &DrainTarget,
        request: Option<&QueuedRequest>,
        entry_id: &str,
        outcome: &Outcome,
    ) -> redis::RedisResult<bool> {
        let mut redis = self.redis.clone();
        let mut pause = Duration::from_millis(100);
        let mut attempts = 0;
        loop {
            let id = request.map(|r| &r.request_id);
            let done = consumer::complete(
                &mut redis,
                &self.keys,
                &target.workflow,
                id,
                entry_id,
                outcome,
                &now_rfc3339(),
            )
            .await;
            attempts += 1;
            match done {
                Err(e) if attempts < 5 => {
                    tracing::debug!(error = %e, "recording the outcome failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause *= 2;
                }
                other => return other,
            }
        }
    }

    /// A connection of its own for blocking reads: a blocking XREADGROUP on a shared
    /// multiplexed connection would stall every other command on it (redis-rs #643).
    async fn blocking_connection(&self, shutdown: &CancellationToken) -> Option<RedisConnection> {
        let timeout = Duration::from_millis(self.config.block_ms) + Duration::from_secs(3);
        let mut pause = Duration::from_millis(100);
        loop {
            match self.redis_endpoint.connect(timeout).await {
                Ok(connection) => return Some(connection),
                Err(e) => tracing::warn!(error = %e, "cannot connect the queue reader to Redis"),
            }
            tokio::select! {
                () = tokio::time::sleep(pause) => {}
                () = shutdown.cancelled() => return None,
            }
            pause = (pause * 2).min(READ_RETRY_MAX);
        }
    }
}

/// One `StartExecution`, treating "already exists with the same input" as started.
pub async fn start_once(
    sfn: &dyn StepFunctions,
    target: &DrainTarget,
    request: &QueuedRequest,
) -> Result<String, SfnError> {
    let name = request.request_id.execution_name();
    let role = target.role_arn.as_deref();
    match sfn
        .start_execution(
            role,
            &target.state_machine_arn,
            &name,
            &request.input,
            request.trace_header.as_deref(),
        )
        .await
    {
        Err(SfnError::AlreadyExists) => {
            let arn = execution_arn(&target.state_machine_arn, &name);
            let existing = sfn.execution_input(role, &arn).await?;
            if same_json(&existing, &request.input) {
                tracing::info!(execution.arn = %arn, "execution was already started for this request");
                Ok(arn)
            } else {
                Err(SfnError::Terminal(format!(
                    "execution name {name} is already used with a different input"
                )))
            }
        }
        other => other,
    }
}

fn same_json(a: &str, b: &str) -> bool {
    a == b
        || matches!((serde_json::from_str::<serde_json::Value>(a), serde_json::from_str::<serde_json::Value>(b)),
            (Ok(x), Ok(y)) if x == y)
}

/// Takes one permit (waiting), then as many more as are free, up to [`MAX_BATCH`].
async fn acquire_batch(
    permits: &Arc<Semaphore>,
    shutdown: &CancellationToken,
) -> Option<Vec<OwnedSemaphorePermit>> {
    let first = tokio::select! {
        permit = Arc::clone(permits).acquire_owned() => permit.ok()?,
        () = shutdown.cancelled() => return None,
    };
    let mut held = vec![first];
    while held.len() < MAX_BATCH {
        match Arc::clone(permits).try_acquire_owned() {
            Ok(permit) => held.push(permit),
            Err(_) => break,
        }
    }
    Some(held)
}

/// A delivery's hold on its queue entry, renewed while it waits.
struct Claim {
    queue: String,
    entry_id: String,
    renewed: Instant,
    every: Duration,
}

/// How long ago an entry entered its queue: a stream entry id starts with that time (ms).
fn entry_age(entry_id: &str) -> Duration {
    let queued_ms = entry_id
        .split('-')
        .next()
        .and_then(|ms| ms.parse::<u64>().ok())
        .unwrap_or(0);
    Duration::from_millis(crate::clock::unix_ms().saturating_sub(queued_ms))
}

/// `pause` ± 20%, so retries of many entries do not fire in lockstep.
fn jittered(pause: Duration) -> Duration {
    let pause_ms = pause.as_millis() as u64;
    let spread = pause_ms / 5;
    let offset = if spread == 0 {
        0
    } else {
        u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % (2 * spread + 1)
    };
    Duration::from_millis(pause_ms - spread + offset)
}

/// An event about `request` (when its entry could be read) of `target`'s workflow.
fn request_event(
    kind: EventKind,
    target: &DrainTarget,
    request: Option<&QueuedRequest>,
) -> AuditEvent {
    let mut event = AuditEvent::now(kind);
    event.workflow = Some(target.workflow.to_string());
    if let Some(request) = request {
        event.request_id = Some(request.request_id.to_string());
        set_owner(&mut event, &request.owner);
        event.client_id.clone_from(&request.client_id);
        event.http_request_id.clone_from(&request.http_request_id);
    }
    event
}

/// Issuer and subject from a request's owner, `"<issuer> <subject>"` (issuers are URLs,
/// without spaces).
fn set_owner(event: &mut AuditEvent, owner: &str) {
    match owner.split_once(' ') {
        Some((issuer, subject)) => {
            event.issuer = Some(issuer.to_owned());
            event.subject = Some(subject.to_owned());
        }
        None => event.subject = Some(owner.to_owned()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RequestId;
    use crate::worker::sfn::fake::{Call, FakeStepFunctions};

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:orders";

    fn target() -> DrainTarget {
        DrainTarget {
            workflow: WorkflowName::parse("orders").unwrap_or_else(|e| panic!("{e}")),
            state_machine_arn: ARN.into(),
            role_arn: None,
            pacing: DrainPacing::default(),
        }
    }

    fn request(input: &str) -> Result<QueuedRequest, Box<dyn std::error::Error>> {
        Ok(QueuedRequest {
            request_id: RequestId::generate(WorkflowName::parse("orders")?),
            input: input.into(),
            owner: "iss sub".into(),
            client_id: None,
            accepted_at: now_rfc3339(),
            http_request_id: None,
            trace_header: None,
            traceparent: None,
        })
    }

    #[tokio::test]
    async fn a_redelivery_of_a_started_request_counts_as_started()
    -> Result<(), Box<dyn std::error::Error>> {
        let request = request(r#"{"a":1}"#)?;
        let name = request.request_id.execution_name();
        let sfn =
            FakeStepFunctions::scripted([Err(SfnError::AlreadyExists), Ok(r#"{"a": 1}"#.into())]);
        assert_eq!(
            start_once(&sfn, &target(), &request).await,
            Ok(execution_arn(ARN, &name))
        );
        assert_eq!(
            sfn.calls(),
            vec![
                Call::Start {
                    name: name.clone(),
                    input: request.input.clone()
                },
                Call::Describe {
                    execution_arn: format!(
                        "arn:aws:states:us-east-1:123456789012:execution:orders:{name}"
                    )
                },
            ]
        );
        Ok(())
    }

    #[tokio::test]
    async fn a_name_clash_with_another_input_is_terminal() -> Result<(), Box<dyn std::error::Error>>
    {
        let sfn =
            FakeStepFunctions::scripted([Err(SfnError::AlreadyExists), Ok(r#"{"a":2}"#.into())]);
        assert!(matches!(
            start_once(&sfn, &target(), &request(r#"{"a":1}"#)?).await,
            Err(SfnError::Terminal(_))
        ));
        Ok(())
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(Duration::from_secs(1)).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jittered(Duration::ZERO), Duration::ZERO);
    }
}
