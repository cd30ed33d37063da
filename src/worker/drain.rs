//! The drain: moves accepted triggers from the workflow queues into `StartExecution`.
//!
//! Exactly once per accepted request, even across crashes and redeliveries:
//! - an entry is acknowledged only after Step Functions answered for good;
//! - the execution name is the request id, so a redelivered entry meets
//!   `ExecutionAlreadyExists`, and the drain then compares the existing execution's input
//!   with the request's to tell "already started by us" from a genuine name clash;
//! - retryable failures are retried on a schedule, then left pending; any consumer takes them
//!   over (`XAUTOCLAIM`) once idle for `claim_idle_ms`, which start-up checks is longer than a
//!   delivery can take, so a slow delivery is never run twice at once.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::sfn::{SfnError, StepFunctions, execution_arn};
use crate::audit::{AuditEvent, AuditLog, EventKind};
use crate::clock::now_rfc3339;
use crate::config::{DrainPacing, WorkerConfig};
use crate::domain::WorkflowName;
use crate::queue::consumer::{self, Delivery, Outcome};
use crate::queue::producer::promote_due;
use crate::queue::{Keys, QueuedRequest};

/// Entries read or claimed in one call at most.
const MAX_BATCH: usize = 64;
/// Pacing windows are stretched by this share, so that jitter between a permit and the
/// call's arrival cannot put N + 1 starts into one window at Step Functions.
const PACING_JITTER_MARGIN_PERCENT: u64 = 5;
/// Longest single wait while paced (re-checked after it).
const PACING_POLL_MAX: Duration = Duration::from_millis(250);
/// How often a full in-flight cap is re-checked.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);
/// A lease outlives its call by this much before it expires on its own.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

static LEASE: std::sync::LazyLock<redis::Script> =
    std::sync::LazyLock::new(|| redis::Script::new(include_str!("../queue/lease.lua")));

/// One permit of a pacing window of `starts_per_second`; `Some(wait)` when none is free.
async fn reserve_start(
    redis: &mut ConnectionManager,
    key: &str,
    starts_per_second: u32,
) -> redis::RedisResult<Option<Duration>> {
    let window_ms = 1_000 * (100 + PACING_JITTER_MARGIN_PERCENT) / 100;
    let member = uuid::Uuid::new_v4().simple().to_string();
    crate::queue::producer::reserve(redis, key, &member, starts_per_second, window_ms).await
}

/// How often due deferred triggers are moved into their queues (their start precision).
const PROMOTE_EVERY: Duration = Duration::from_millis(250);
/// Pause after a failed Redis read before the next, at most.
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

/// A workflow the drain serves.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DrainTarget {
    pub workflow: WorkflowName,
    pub state_machine_arn: String,
    pub pacing: DrainPacing,
}

/// Everything one drain needs; shared by its tasks.
pub struct Drain {
    pub redis_client: redis::Client,
    /// For completions and reclaim (non-blocking commands).
    pub redis: ConnectionManager,
    pub keys: Keys,
    /// The workflows to serve; a configuration reload sends new ones.
    pub targets: watch::Receiver<Vec<DrainTarget>>,
    pub sfn: Arc<dyn StepFunctions>,
    pub audit: AuditLog,
    pub config: WorkerConfig,
    pub consumer: String,
    /// The account/region-wide pacing window and its starts per second, if any.
    pub account_pace: Option<(String, u32)>,
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

    /// Starts one entry's execution and records the outcome; on shutdown or when retries
    /// run out, leaves the entry pending for a later delivery.
    #[tracing::instrument(skip_all, fields(workflow = %target.workflow, entry = %delivery.entry_id))]
    async fn deliver(
        &self,
        target: &DrainTarget,
        delivery: Delivery,
        shutdown: &CancellationToken,
    ) {
        let outcome = match &delivery.request {
            Err(problem) => {
                tracing::error!(problem = %problem, "unreadable queue entry; it can never start");
                Some(Outcome::Failed {
                    error: format!("unreadable queue entry: {problem}"),
                })
            }
            Ok(request) => self.start_with_retries(target, request, shutdown).await,
        };
        let Some(outcome) = outcome else { return };
        let request = delivery.request.as_ref().ok();
        if let Err(e) = self
            .complete_with_retries(target, request, &delivery.entry_id, &outcome)
            .await
        {
            // Left pending: the redelivery meets ExecutionAlreadyExists and completes then.
            tracing::warn!(error = %e, "could not record the outcome; the entry will be redelivered");
            return;
        }
        let mut event = AuditEvent::now(match outcome {
            Outcome::Started { .. } => EventKind::Started,
            Outcome::Failed { .. } => EventKind::Failed,
        });
        event.workflow = Some(target.workflow.to_string());
        if let Some(request) = request {
            event.request_id = Some(request.request_id.to_string());
            event.subject = Some(request.owner.clone());
            event.client_id.clone_from(&request.client_id);
        }
        match outcome {
            Outcome::Started { execution_arn } => {
                tracing::info!(execution.arn = %execution_arn, "execution started");
                event.execution_arn = Some(execution_arn);
            }
            Outcome::Failed { error } => {
                tracing::warn!(error = %error, "execution failed for good");
                event.reason = Some(error);
            }
        }
        self.audit.record(event);
    }

    async fn start_with_retries(
        &self,
        target: &DrainTarget,
        request: &QueuedRequest,
        shutdown: &CancellationToken,
    ) -> Option<Outcome> {
        let mut pauses = self.config.retry_backoff_ms.iter();
        loop {
            // `None`: shutting down; the entry stays pending for a later delivery.
            let lease = self.pace(target, shutdown).await?;
            let started = start_once(self.sfn.as_ref(), &target.state_machine_arn, request).await;
            self.release(target, lease).await;
            match started {
                Ok(execution_arn) => return Some(Outcome::Started { execution_arn }),
                Err(SfnError::Retryable(error)) => {
                    let Some(pause) = pauses.next() else {
                        tracing::warn!(%error, "start still failing; leaving the entry for a later delivery");
                        return None;
                    };
                    tracing::info!(%error, pause_ms = pause, "start failed; retrying");
                    tokio::select! {
                        () = tokio::time::sleep(jittered(*pause)) => {}
                        () = shutdown.cancelled() => return None,
                    }
                }
                Err(e) => {
                    return Some(Outcome::Failed {
                        error: e.to_string(),
                    });
                }
            }
        }
    }

    /// Waits for permission to call `StartExecution` for `target`: first an in-flight lease
    /// (if the workflow caps calls in flight), then a permit of the account/region window and
    /// of the workflow's window (each: at most N starts in any window, shared by every
    /// replica). Permits come last so that each is used at once: taken earlier, they would
    /// pile up while the service is slow and leave together, in a burst. `None` on shutdown;
    /// otherwise the lease to release after the call.
    async fn pace(
        &self,
        target: &DrainTarget,
        shutdown: &CancellationToken,
    ) -> Option<Option<String>> {
        let mut redis = self.redis.clone();
        let lease = match target.pacing.max_in_flight {
            Some(max) => Some(self.take_lease(&mut redis, target, max, shutdown).await?),
            None => None,
        };
        let windows = [
            self.account_pace.clone(),
            target
                .pacing
                .starts_per_second
                .map(|rate| (self.keys.pace(&target.workflow), rate)),
        ];
        for (key, starts_per_second) in windows.into_iter().flatten() {
            loop {
                let wait = match reserve_start(&mut redis, &key, starts_per_second).await {
                    Ok(None) => break,
                    Ok(Some(wait)) => wait,
                    Err(e) => {
                        tracing::warn!(error = %e, "drain pacing unavailable; waiting");
                        PACING_POLL_MAX
                    }
                };
                tokio::select! {
                    () = tokio::time::sleep(wait.min(PACING_POLL_MAX)) => {}
                    () = shutdown.cancelled() => {
                        self.release(target, lease).await;
                        return None;
                    }
                }
            }
        }
        Some(lease)
    }

    /// One of `max` in-flight leases of `target`, shared by every replica.
    async fn take_lease(
        &self,
        redis: &mut ConnectionManager,
        target: &DrainTarget,
        max: u32,
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
            tokio::select! {
                () = tokio::time::sleep(wait) => {}
                () = shutdown.cancelled() => return None,
            }
        }
    }

    /// Gives back an in-flight lease (one not given back expires by itself).
    async fn release(&self, target: &DrainTarget, lease: Option<String>) {
        let Some(lease) = lease else { return };
        let released: redis::RedisResult<i64> = redis::cmd("ZREM")
            .arg(self.keys.in_flight(&target.workflow))
            .arg(lease)
            .query_async(&mut self.redis.clone())
            .await;
        if let Err(e) = released {
            tracing::debug!(error = %e, "could not release an in-flight lease; it will expire");
        }
    }

    async fn complete_with_retries(
        &self,
        target: &DrainTarget,
        request: Option<&QueuedRequest>,
        entry_id: &str,
        outcome: &Outcome,
    ) -> redis::RedisResult<()> {
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
    async fn blocking_connection(&self, shutdown: &CancellationToken) -> Option<ConnectionManager> {
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Duration::from_secs(3))
            .set_response_timeout(
                Duration::from_millis(self.config.block_ms) + Duration::from_secs(3),
            );
        let mut pause = Duration::from_millis(100);
        loop {
            match ConnectionManager::new_with_config(self.redis_client.clone(), config.clone())
                .await
            {
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
    state_machine_arn: &str,
    request: &QueuedRequest,
) -> Result<String, SfnError> {
    let name = request.request_id.execution_name();
    match sfn
        .start_execution(state_machine_arn, &name, &request.input)
        .await
    {
        Err(SfnError::AlreadyExists) => {
            let arn = execution_arn(state_machine_arn, &name);
            let existing = sfn.execution_input(&arn).await?;
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

/// `pause` ± 20%, so retries of many entries do not fire in lockstep.
fn jittered(pause_ms: u64) -> Duration {
    let spread = pause_ms / 5;
    let offset = if spread == 0 {
        0
    } else {
        u64::from(rand_core::RngCore::next_u32(&mut rand_core::OsRng)) % (2 * spread + 1)
    };
    Duration::from_millis(pause_ms - spread + offset)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::RequestId;
    use crate::worker::sfn::fake::{Call, FakeStepFunctions};

    const ARN: &str = "arn:aws:states:us-east-1:123456789012:stateMachine:orders";

    fn request(input: &str) -> Result<QueuedRequest, Box<dyn std::error::Error>> {
        Ok(QueuedRequest {
            request_id: RequestId::generate(WorkflowName::parse("orders")?),
            input: input.into(),
            owner: "iss sub".into(),
            client_id: None,
            accepted_at: now_rfc3339(),
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
            start_once(&sfn, ARN, &request).await,
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
            start_once(&sfn, ARN, &request(r#"{"a":1}"#)?).await,
            Err(SfnError::Terminal(_))
        ));
        Ok(())
    }

    #[test]
    fn jitter_stays_within_a_fifth() {
        for _ in 0..100 {
            let d = jittered(1000).as_millis();
            assert!((800..=1200).contains(&d), "{d}");
        }
        assert_eq!(jittered(0), Duration::ZERO);
    }
}
