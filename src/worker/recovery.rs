//! What waits outside the queue: deferred triggers that are due (promotion), and held
//! triggers whose admitting process stopped before releasing them (fail-closed recovery).

use std::sync::Arc;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::drain::{Drain, MAX_BATCH};
use crate::audit::AuditEvent;
use crate::config::Workflow;
use crate::queue::waiting::{Stranded, promote_due, release_held, stranded_held};
use crate::redis_conn::RedisConnection;

/// How often due deferred triggers are moved into their queues (their start precision).
const PROMOTE_EVERY: Duration = Duration::from_millis(250);

impl Drain {
    /// Moves due deferred triggers into their queues, every [`PROMOTE_EVERY`].
    pub(super) async fn promote_loop(self: Arc<Self>, shutdown: CancellationToken) {
        let mut redis = self.redis.clone();
        loop {
            tokio::select! {
                () = tokio::time::sleep(PROMOTE_EVERY) => {}
                () = shutdown.cancelled() => return,
            }
            let targets = self.targets.borrow().clone();
            for target in &targets {
                loop {
                    match promote_due(&mut redis, &self.keys, &target.name, MAX_BATCH).await {
                        Ok(moved) if moved == MAX_BATCH => continue,
                        Ok(_) => break,
                        Err(e) => {
                            tracing::warn!(workflow = %target.name, error = %e, "moving due deferred triggers failed");
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

    /// Held triggers whose admitting process stopped before releasing them: released once
    /// their `accepted` records are chained (written into the outbox at admission; recorded
    /// here, late, for one a version before the outbox admitted), so nothing starts
    /// unaudited. Replicas may race; the release moves each once.
    pub(super) async fn recover_held(
        &self,
        redis: &mut RedisConnection,
        target: &Workflow,
        deadline: Duration,
    ) {
        let stranded = match stranded_held(redis, &self.keys, &target.name, MAX_BATCH).await {
            Ok(stranded) => stranded,
            Err(e) => {
                tracing::warn!(workflow = %target.name, error = %e, "reading held triggers failed");
                return;
            }
        };
        if stranded.is_empty() {
            return;
        }
        let mut audited = Vec::with_capacity(stranded.len());
        for Stranded {
            request_id,
            request,
            audited: in_outbox,
        } in stranded
        {
            if let Err(problem) = &request {
                tracing::warn!(problem = %problem, "a held trigger cannot be read");
            }
            if !in_outbox {
                let event =
                    AuditEvent::recovered_accepted(&target.name, &request_id, request.as_ref());
                if self.audit.record_durably(event, deadline).await.is_err() {
                    tracing::warn!(workflow = %target.name, "audit unavailable; held triggers stay held");
                    break;
                }
            }
            audited.push(request_id);
        }
        // Chained, not only in the outbox: what `audit.fail_closed` promises.
        if !matches!(
            tokio::time::timeout(deadline, self.audit.flush()).await,
            Ok(Ok(()))
        ) {
            tracing::warn!(workflow = %target.name, "audit unavailable; held triggers stay held");
            return;
        }
        if let Err(e) = release_held(redis, &self.keys, &target.name, &audited).await {
            tracing::warn!(workflow = %target.name, error = %e, "releasing recovered triggers failed");
        }
    }
}
