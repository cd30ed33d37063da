//! The drain's shared pacing in Redis: in-flight leases and pacing-window permits, each one
//! script (see `lease.lua`, `pace_reserve.lua`). The worker decides when to wait.

use std::time::Duration;

use super::keys::Keys;
use super::scripts::{
    LeaseKeys, PaceKeys, PaceReserve, PaceReserveArgs, PaceSettle, PaceSettleArgs, TakeLease,
    TakeLeaseArgs,
};
use crate::domain::WorkflowName;
use crate::redis_conn::RedisConnection;

/// The pacing window: at most N starts per second.
const PACING_WINDOW: Duration = Duration::from_secs(1);

/// Takes one of `max` in-flight leases of `workflow` as `member`, held for `ttl` at most:
/// `None` when taken, else how long until the oldest lease expires at the latest.
pub async fn take_lease(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    member: &str,
    max: u32,
    ttl: Duration,
) -> redis::RedisResult<Option<Duration>> {
    let leases = LeaseKeys {
        leases: keys.in_flight(workflow),
    };
    let args = TakeLeaseArgs {
        member,
        max,
        ttl_ms: ttl.as_millis() as u64,
    };
    let wait_ms: u64 = TakeLease::invocation(leases, &args)
        .invoke_async(redis)
        .await?;
    Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
}

/// Gives back an in-flight lease (one not given back expires by itself).
pub async fn give_back_lease(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    member: &str,
) -> redis::RedisResult<()> {
    let _: i64 = redis::cmd("ZREM")
        .arg(keys.in_flight(workflow))
        .arg(member)
        .query_async(redis)
        .await?;
    Ok(())
}

/// A permit of `window` (at most `starts_per_second` calls reach Step Functions in any
/// second) for a call that may reach it until `bound` has passed: `None` when granted, else
/// how long to wait.
pub async fn reserve_permit(
    redis: &mut RedisConnection,
    window: &str,
    member: &str,
    starts_per_second: u32,
    bound: Duration,
) -> redis::RedisResult<Option<Duration>> {
    let args = PaceReserveArgs {
        member,
        starts: starts_per_second,
        window_ms: PACING_WINDOW.as_millis() as u64,
        bound_ms: bound.as_millis() as u64,
    };
    let keys = PaceKeys {
        window: window.to_owned(),
    };
    let wait_ms: u64 = PaceReserve::invocation(keys, &args)
        .invoke_async(redis)
        .await?;
    Ok((wait_ms > 0).then(|| Duration::from_millis(wait_ms)))
}

/// Settles a permit at the time of its call's answer (one not settled counts until its
/// call's bound).
pub async fn settle_permit(
    redis: &mut RedisConnection,
    window: &str,
    member: &str,
) -> redis::RedisResult<()> {
    let keys = PaceKeys {
        window: window.to_owned(),
    };
    let _: i64 = PaceSettle::invocation(keys, &PaceSettleArgs { member })
        .invoke_async(redis)
        .await?;
    Ok(())
}
