//! The marks of EXPRESS start attempts (see `worker/express.rs` for what they guard).
//!
//! A delivery marks a start before calling `StartExecution`, with a token of its own, and
//! drops the mark when the start certainly did not happen; completion (`complete.lua`,
//! `dead_letter.lua`) drops it with the entry. A mark found by a later delivery is an
//! attempt whose outcome nobody recorded: a crash mid-call, a timeout, or another delivery
//! of the same entry calling right now.

use redis::RedisResult;

use super::keys::Keys;
use super::scripts::{
    AttemptKeys, ClearAttempt, ClearAttemptArgs, MarkAttempt, MarkAttemptArgs, MarkStarted,
    MarkStartedArgs,
};
use crate::domain::RequestId;
use crate::redis_conn::RedisConnection;

/// How long a mark lives at most: completion deletes it; the bound only reclaims the mark of
/// an entry removed some other way.
const MARK_TTL_SECONDS: u64 = 30 * 24 * 3600;

/// The value of a mark that records a start known to have succeeded.
const STARTED_PREFIX: &str = "started:";

/// What an earlier delivery of the same request left before this one marked its attempt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EarlierAttempt {
    /// Nothing: no start was tried, or every one certainly failed.
    None,
    /// A start whose outcome is unknown (or one in flight in another delivery).
    Unknown,
    /// A start that succeeded, with its execution's ARN, whose completion was not recorded.
    Started(String),
}

/// Marks the start `token`'s delivery is about to try. `exclusive` (at most once): another
/// delivery's mark is kept and this one not set, so the caller must not call unless the
/// answer is [`EarlierAttempt::None`]. Otherwise the mark becomes this delivery's. The
/// delivery's own mark is no earlier attempt (the delivery knows its own history).
pub async fn mark(
    redis: &mut RedisConnection,
    keys: &Keys,
    id: &RequestId,
    token: &str,
    exclusive: bool,
) -> RedisResult<EarlierAttempt> {
    let args = MarkAttemptArgs {
        token,
        exclusive: if exclusive { "1" } else { "0" },
        ttl_seconds: MARK_TTL_SECONDS,
    };
    let earlier: String = MarkAttempt::invocation(attempt_keys(keys, id), &args)
        .invoke_async(redis)
        .await?;
    Ok(if earlier.is_empty() {
        EarlierAttempt::None
    } else if let Some(execution_arn) = earlier.strip_prefix(STARTED_PREFIX) {
        EarlierAttempt::Started(execution_arn.to_owned())
    } else {
        EarlierAttempt::Unknown
    })
}

/// Records that `token`'s marked start succeeded, so that a delivery after a crash (before
/// the completion was recorded) completes it as started instead of trying again. Only over
/// the delivery's own mark: a request another delivery completed meanwhile keeps no mark.
pub async fn mark_started(
    redis: &mut RedisConnection,
    keys: &Keys,
    id: &RequestId,
    token: &str,
    execution_arn: &str,
) -> RedisResult<()> {
    let started = format!("{STARTED_PREFIX}{execution_arn}");
    let args = MarkStartedArgs {
        token,
        started: &started,
        ttl_seconds: MARK_TTL_SECONDS,
    };
    let marked: i64 = MarkStarted::invocation(attempt_keys(keys, id), &args)
        .invoke_async(redis)
        .await?;
    if marked == 0 {
        tracing::info!(
            "the start is not recorded in the mark: another delivery took the request over"
        );
    }
    Ok(())
}

/// Drops `token`'s mark after a start that certainly did not happen (it will be tried
/// again); a mark another delivery set since is left.
pub async fn clear(
    redis: &mut RedisConnection,
    keys: &Keys,
    id: &RequestId,
    token: &str,
) -> RedisResult<()> {
    let _: i64 = ClearAttempt::invocation(attempt_keys(keys, id), &ClearAttemptArgs { token })
        .invoke_async(redis)
        .await?;
    Ok(())
}

fn attempt_keys(keys: &Keys, id: &RequestId) -> AttemptKeys {
    AttemptKeys {
        attempt: keys.attempt(id),
    }
}
