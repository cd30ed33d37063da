//! Reading a workflow's queue: new entries for this consumer, entries other consumers left
//! idle (reclaim), on a blocking connection of the reader's own; and removing the consumers
//! of stopped processes.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::drain::{Drain, MAX_BATCH};
use crate::config::Workflow;
use crate::queue::consumer::{self};
use crate::redis_conn::RedisConnection;

/// Longest pause of a reader held off by an open breaker (re-checked after it).
const BREAKER_POLL_MAX: Duration = Duration::from_secs(1);
/// Pause after a failed Redis read before the next, at most.
const READ_RETRY_MAX: Duration = Duration::from_secs(5);

impl Drain {
    /// Reads one workflow's queue: first what this consumer name already holds (after a
    /// restart with a stable name), then new entries.
    pub(super) async fn read_loop(
        self: Arc<Self>,
        target: Arc<Workflow>,
        permits: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let queue = self.keys.queue(&target.name);
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
            let block = self.config.block.as_millis() as usize;
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
                    tracing::warn!(workflow = %target.name, error = %e, "queue read failed");
                    tokio::select! {
                        () = tokio::time::sleep(pause) => {}
                        () = shutdown.cancelled() => return,
                    }
                    pause = (pause * 2).min(READ_RETRY_MAX);
                }
            }
        }
    }

    /// Periodically takes over entries left pending too long, by any consumer.
    pub(super) async fn reclaim_loop(
        self: Arc<Self>,
        permits: Arc<Semaphore>,
        tracker: TaskTracker,
        shutdown: CancellationToken,
    ) {
        let every = (self.config.claim_idle / 2).max(Duration::from_millis(250));
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
                let queue = self.keys.queue(&target.name);
                let mut cursor = "0-0".to_owned();
                loop {
                    let Some(mut held) = acquire_batch(&permits, &shutdown).await else {
                        return;
                    };
                    let claimed = consumer::claim_stale(
                        &mut redis,
                        &queue,
                        &self.consumer,
                        self.config.claim_idle.as_millis() as u64,
                        &cursor,
                        held.len(),
                    )
                    .await;
                    match claimed {
                        Ok((next, deliveries)) => {
                            if !deliveries.is_empty() {
                                tracing::info!(workflow = %target.name, entries = deliveries.len(), "reclaimed stale entries");
                            }
                            self.dispatch(target, deliveries, &mut held, &tracker, &shutdown);
                            cursor = next;
                        }
                        Err(e) => {
                            if e.code() != Some("NOGROUP") {
                                tracing::warn!(workflow = %target.name, error = %e, "reclaim failed");
                            }
                            break;
                        }
                    }
                    if cursor == "0-0" {
                        break;
                    }
                }
                self.prune_consumers(&mut redis, target, &queue).await;
            }
        }
    }

    /// Removes the consumers of stopped processes from `queue`'s group, so that restarts
    /// and rollouts do not grow it; never one that still owns entries.
    async fn prune_consumers(&self, redis: &mut RedisConnection, target: &Workflow, queue: &str) {
        let expiry = self.config.consumer_expiry;
        match consumer::prune_idle(redis, queue, &self.consumer, expiry).await {
            Ok(0) => {}
            Ok(removed) => {
                tracing::info!(workflow = %target.name, consumers = removed, "removed idle consumers");
            }
            Err(e) => {
                tracing::warn!(workflow = %target.name, error = %e, "could not remove idle consumers");
            }
        }
    }

    /// A connection of its own for blocking reads: a blocking XREADGROUP on a shared
    /// multiplexed connection would stall every other command on it (redis-rs #643).
    pub(super) async fn blocking_connection(
        &self,
        shutdown: &CancellationToken,
    ) -> Option<RedisConnection> {
        let timeout = self.config.block + Duration::from_secs(3);
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

/// Takes one permit (waiting), then as many more as are free, up to [`MAX_BATCH`].
pub(super) async fn acquire_batch(
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
