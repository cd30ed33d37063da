//! Triggers that wait outside their workflow's queue: deferred ones until their due time,
//! held ones (`audit.fail_closed`) until their admitting process releases them or, if it
//! stopped first, the drain's recovery does. Each move into the queue is one script.

use crate::domain::WorkflowName;
use crate::redis_conn::RedisConnection;

use super::keys::Keys;
use super::request::{EntryError, QueuedRequest};
use super::scripts::{MoveKeys, Promote, PromoteArgs, Release, ReleaseArgs, ReleaseKeys};

/// Moves up to `batch` due deferred triggers of `workflow` into its queue; returns how many.
pub async fn promote_due(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    batch: usize,
) -> redis::RedisResult<usize> {
    let keys = MoveKeys {
        deferred: keys.deferred(workflow),
        deferred_entries: keys.deferred_entries(workflow),
        queue: keys.queue(workflow),
    };
    Promote::invocation(keys, &PromoteArgs { batch })
        .invoke_async(redis)
        .await
}

/// Moves held triggers of `workflow` into its queue (or, not yet due, among its deferred
/// triggers), each only if still held; returns how many moved.
pub async fn release_held(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    request_ids: &[String],
) -> redis::RedisResult<usize> {
    if request_ids.is_empty() {
        return Ok(0);
    }
    let keys = ReleaseKeys {
        held: keys.held(workflow),
        deferred_entries: keys.deferred_entries(workflow),
        queue: keys.queue(workflow),
        deferred: keys.deferred(workflow),
    };
    Release::invocation(keys, &ReleaseArgs { request_ids })
        .invoke_async(redis)
        .await
}

/// A held trigger whose admitting process should have released it by now.
pub struct Stranded {
    pub request_id: String,
    /// What could be read of it.
    pub request: Result<QueuedRequest, EntryError>,
    /// Its `accepted` event is in the outbox (admitted by a version that writes it there).
    pub audited: bool,
}

/// Held triggers whose admitting process should have released them by now (it stopped in
/// between): up to `batch`.
pub async fn stranded_held(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    batch: usize,
) -> redis::RedisResult<Vec<Stranded>> {
    let ids: Vec<String> = redis::cmd("ZRANGEBYSCORE")
        .arg(keys.held(workflow))
        .arg("-inf")
        .arg(crate::clock::unix_ms())
        .arg("LIMIT")
        .arg(0)
        .arg(batch)
        .query_async(redis)
        .await?;
    if ids.is_empty() {
        return Ok(Vec::new());
    }
    let fields: Vec<Option<String>> = redis::cmd("HMGET")
        .arg(keys.deferred_entries(workflow))
        .arg(&ids)
        .query_async(redis)
        .await?;
    Ok(ids
        .into_iter()
        .zip(fields)
        .map(|(request_id, json)| {
            let audited = json.as_deref().is_some_and(is_audited);
            let request = json
                .ok_or(EntryError::Missing("held entry"))
                .and_then(|json| QueuedRequest::from_waiting(&request_id, &json));
            Stranded {
                request_id,
                request,
                audited,
            }
        })
        .collect())
}

/// Whether a waiting entry's fields say its admission event went into the outbox.
fn is_audited(json: &str) -> bool {
    #[derive(serde::Deserialize)]
    struct Marker {
        #[serde(default)]
        audited: bool,
    }
    serde_json::from_str::<Marker>(json).is_ok_and(|marker| marker.audited)
}
