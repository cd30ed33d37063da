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
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::breaker::Breakers;
use super::guarantee::Guarantees;
use super::in_flight::InFlight;
use super::repeated::RepeatedFailures;
use super::sfn::StepFunctions;
use crate::audit::{AuditEvent, AuditLog};
use crate::config::{Config, WorkerConfig, Workflow};
use crate::domain::WorkflowName;
use crate::queue::Keys;
use crate::queue::consumer::{self, Delivery};
use crate::redis_conn::{RedisConnection, RedisEndpoint};

/// Entries read or claimed in one call at most.
pub(super) const MAX_BATCH: usize = 64;

/// How often `run_until_empty` checks whether the queues are empty.
const SETTLED_POLL: Duration = Duration::from_millis(10);

/// What a drain talks to.
pub struct DrainPartners {
    pub redis_endpoint: RedisEndpoint,
    /// For completions, reclaim and pacing (non-blocking commands).
    pub redis: RedisConnection,
    pub sfn: Arc<dyn StepFunctions>,
    pub audit: AuditLog,
    /// One circuit breaker per state machine (shared with `/readyz`).
    pub breakers: Arc<Breakers>,
    /// The state machines' types (shared with start-up, reload and the API).
    pub guarantees: Arc<Guarantees>,
}

/// Everything one drain needs; shared by its tasks.
pub struct Drain {
    pub(super) redis_endpoint: RedisEndpoint,
    pub(super) redis: RedisConnection,
    pub(super) keys: Keys,
    /// The workflows to serve; a configuration reload sends new ones.
    pub(super) targets: watch::Receiver<Vec<Arc<Workflow>>>,
    pub(super) sfn: Arc<dyn StepFunctions>,
    pub(super) audit: AuditLog,
    pub(super) config: WorkerConfig,
    pub(super) consumer: String,
    /// The account/region-wide pacing window and its starts per second, if any.
    pub(super) account_pace: Option<(String, u32)>,
    pub(super) breakers: Arc<Breakers>,
    pub(super) guarantees: Arc<Guarantees>,
    /// The entries this process is delivering: never two deliveries of one at once here.
    pub(super) in_flight: Arc<InFlight>,
    /// `audit.fail_closed`: the write timeout for recovering held triggers whose admitting
    /// process stopped before releasing them.
    pub(super) held_recovery: Option<Duration>,
    /// Repeated start failures, logged once per interval with a count.
    pub(super) failures: RepeatedFailures,
    /// How long a request's status is kept once its delivery ended it.
    pub(super) finished_status_ttl: Duration,
}

impl Drain {
    /// Writes an event that has no state change of its own (`retried`) into the workflow's
    /// outbox, so a crash while the delivery goes on cannot lose it. If Redis will not take
    /// it, the writer gets it instead; should the outbox have taken it after all (a timeout
    /// after Redis acted), the trail holds it twice, under one event `id`.
    pub(super) async fn audit_in_outbox(&self, workflow: &Workflow, event: AuditEvent) {
        let Some(sealed) = self.audit.seal(&event) else {
            return;
        };
        let mut redis = self.redis.clone();
        match crate::audit::outbox::add(&mut redis, &self.keys, &workflow.name, &sealed).await {
            Ok(()) => self.audit.nudge(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot write an audit event to the outbox; handing it to the writer");
                self.audit.record(event).await;
            }
        }
    }
}

impl Drain {
    /// The drain `config` describes, serving the workflows `targets` sends.
    pub fn new(
        partners: DrainPartners,
        keys: Keys,
        targets: watch::Receiver<Vec<Arc<Workflow>>>,
        config: &Config,
    ) -> Self {
        let DrainPartners {
            redis_endpoint,
            redis,
            sfn,
            audit,
            breakers,
            guarantees,
        } = partners;
        let aws = &config.aws;
        Self {
            account_pace: (aws.starts_per_second > 0)
                .then(|| (keys.account_pace(&aws.region), aws.starts_per_second)),
            redis_endpoint,
            redis,
            keys,
            targets,
            sfn,
            audit,
            consumer: config
                .worker
                .consumer_name
                .clone()
                .unwrap_or_else(unique_consumer_name),
            config: config.worker.clone(),
            breakers,
            guarantees,
            in_flight: Arc::default(),
            held_recovery: config
                .audit
                .fail_closed_timing()
                .map(|timing| timing.write_timeout),
            failures: RepeatedFailures::default(),
            finished_status_ttl: config.server.finished_status_ttl(),
        }
    }

    /// This drain's consumer name in the workers' group.
    pub fn consumer(&self) -> &str {
        &self.consumer
    }

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
        let mut readers: HashMap<WorkflowName, (Arc<Workflow>, CancellationToken)> = HashMap::new();
        let mut targets = drain.targets.clone();
        loop {
            let current = targets.borrow_and_update().clone();
            readers.retain(|_, (target, stop)| {
                let keep = current.iter().any(|now| now.same_delivery(target));
                if !keep {
                    stop.cancel();
                }
                keep
            });
            for target in current {
                if readers.contains_key(&target.name) {
                    continue;
                }
                let stop = shutdown.child_token();
                readers.insert(target.name.clone(), (target.clone(), stop.clone()));
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

    /// Runs until nothing is left to start — every target's queue empty, nothing held, no
    /// deferred trigger due — then stops as on `shutdown` (in-flight deliveries finish
    /// first). Tests and benchmarks wait on this condition instead of sleeping. An entry
    /// that keeps failing keeps it running until it is dead-lettered; so do held triggers
    /// left from a time `audit.fail_closed` was on, when it is off now (nothing recovers
    /// them); with no targets it returns at once.
    pub async fn run_until_empty(self, shutdown: CancellationToken) {
        let stop = shutdown.child_token();
        let (mut redis, keys, targets) =
            (self.redis.clone(), self.keys.clone(), self.targets.clone());
        let watch = async {
            loop {
                let current = targets.borrow().clone();
                let mut settled = true;
                for target in &current {
                    let workflow = &target.name;
                    match consumer::is_settled(&mut redis, &keys, workflow).await {
                        Ok(true) => {}
                        Ok(false) => settled = false,
                        Err(e) => {
                            tracing::debug!(error = %e, "cannot tell whether the queues are empty");
                            settled = false;
                        }
                    }
                }
                if settled {
                    stop.cancel();
                    return;
                }
                tokio::select! {
                    () = tokio::time::sleep(SETTLED_POLL) => {}
                    () = stop.cancelled() => return,
                }
            }
        };
        tokio::join!(self.run(stop.clone()), watch);
    }

    /// Starts one task per delivery, each holding one of `held`'s permits.
    pub(super) fn dispatch(
        self: &Arc<Self>,
        target: &Arc<Workflow>,
        deliveries: Vec<Delivery>,
        held: &mut Vec<OwnedSemaphorePermit>,
        tracker: &TaskTracker,
        shutdown: &CancellationToken,
    ) {
        for delivery in deliveries {
            let Some(in_flight) = self.in_flight.enter(&target.name, &delivery.entry_id) else {
                tracing::debug!(workflow = %target.name, entry = %delivery.entry_id, "already being delivered here");
                continue;
            };
            let permit = held.pop();
            let (drain, target, shutdown) =
                (Arc::clone(self), Arc::clone(target), shutdown.clone());
            tracker.spawn(async move {
                drain.deliver(&target, delivery, &shutdown).await;
                drop(in_flight);
                drop(permit);
            });
        }
    }
}

/// `<host>-<pid>-<random>`: unique per process, so a restarted process never mistakes a
/// crashed one's deliveries for its own (those are reclaimed after `claim_idle_ms`).
fn unique_consumer_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "stepgate".into());
    let random = &uuid::Uuid::new_v4().simple().to_string()[..8];
    format!("{host}-{}-{random}", std::process::id())
}
