//! Drain pacing shared by every replica through Redis: starts per second (per workflow and
//! per account) and calls in flight, as permits taken before a call and given back after.

use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::delivery::{Claim, Yielded};
use super::drain::Drain;
use crate::config::Workflow;
use crate::queue::pacing;
use crate::redis_conn::RedisConnection;

/// Longest single wait while paced (re-checked after it).
const PACING_POLL_MAX: Duration = Duration::from_millis(250);
/// How often a full in-flight cap is re-checked.
const IN_FLIGHT_POLL: Duration = Duration::from_millis(20);
/// A lease outlives its call by this much before it expires on its own.
const LEASE_MARGIN: Duration = Duration::from_secs(5);

/// What a call holds while it runs: an in-flight lease, and one permit (`member`) in each
/// pacing window; all given back by [`Drain::release`] once Step Functions answered.
#[derive(Debug, Default)]
pub(super) struct Permits {
    lease: Option<String>,
    member: String,
    windows: Vec<String>,
}

impl Drain {
    /// Waits for permission to call `StartExecution` for `target`: first an in-flight lease
    /// (if the workflow caps calls in flight), then a permit of the account/region window and
    /// of the workflow's window (each: at most N calls reach Step Functions in any second,
    /// shared by every replica; see `pace_reserve.lua`). Permits come last so that each is used at
    /// once: taken earlier, they would pile up while the service is slow and leave together,
    /// in a burst.
    pub(super) async fn pace(
        &self,
        target: &Workflow,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Result<Permits, Yielded> {
        let mut redis = self.redis.clone();
        let mut permits = Permits {
            member: uuid::Uuid::new_v4().simple().to_string(),
            ..Permits::default()
        };
        if let Some(max) = target.drain.max_in_flight {
            permits.lease = Some(
                self.take_lease(&mut redis, target, max, claim, shutdown)
                    .await?,
            );
        }
        let windows = [
            self.account_pace.clone(),
            target
                .drain
                .starts_per_second
                .map(|rate| (self.keys.pace(&target.name), rate)),
        ];
        // A call may reach Step Functions until its bound has passed.
        let bound = self.config.call_timeout;
        for (key, starts_per_second) in windows.into_iter().flatten() {
            loop {
                let reserved = pacing::reserve_permit(
                    &mut redis,
                    &key,
                    &permits.member,
                    starts_per_second,
                    bound,
                )
                .await;
                let wait = match reserved {
                    Ok(None) => break,
                    Ok(Some(wait)) => wait,
                    Err(e) => {
                        tracing::warn!(error = %e, "drain pacing unavailable; waiting");
                        PACING_POLL_MAX
                    }
                };
                if let Err(yielded) = self.wait(wait.min(PACING_POLL_MAX), claim, shutdown).await {
                    self.release(target, permits).await;
                    return Err(yielded);
                }
            }
            permits.windows.push(key);
        }
        Ok(permits)
    }

    /// One of `max` in-flight leases of `target`, shared by every replica.
    pub(super) async fn take_lease(
        &self,
        redis: &mut RedisConnection,
        target: &Workflow,
        max: u32,
        claim: &mut Claim,
        shutdown: &CancellationToken,
    ) -> Result<String, Yielded> {
        let lease = uuid::Uuid::new_v4().simple().to_string();
        let ttl = self.config.call_timeout + LEASE_MARGIN;
        loop {
            let taken = pacing::take_lease(redis, &self.keys, &target.name, &lease, max, ttl).await;
            let wait = match taken {
                Ok(None) => return Ok(lease),
                Ok(Some(_)) => IN_FLIGHT_POLL,
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
    pub(super) async fn release(&self, target: &Workflow, permits: Permits) {
        let mut redis = self.redis.clone();
        if let Some(lease) = permits.lease {
            let released =
                pacing::give_back_lease(&mut redis, &self.keys, &target.name, &lease).await;
            if let Err(e) = released {
                tracing::debug!(error = %e, "could not release an in-flight lease; it will expire");
            }
        }
        for window in permits.windows {
            let settled = pacing::settle_permit(&mut redis, &window, &permits.member).await;
            if let Err(e) = settled {
                tracing::debug!(error = %e, "could not settle a pacing permit; it counts until its bound");
            }
        }
    }
}
