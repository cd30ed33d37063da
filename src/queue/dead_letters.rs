//! A workflow's dead letters: queue entries that can never start as they are (the state
//! machine is missing, access is denied, the input is refused, the name is taken with
//! another input, or retries ran past `worker.retry_max_age_seconds`).
//!
//! They wait in the stream `<p>:{wf:<name>}:dead` with their original fields plus `reason`,
//! `dead_lettered_at` and `queue_entry`, until an operator replays them (back into the queue
//! with the same request id, hence the same execution name: a replay can never start a
//! second execution) or purges them (the request's status becomes `failed`). Each move is
//! one script, so a crash never leaves an entry in both places or in neither.

use crate::audit::outbox::SealedEvent;
use crate::redis_conn::RedisConnection;
use redis::streams::{StreamId, StreamRangeReply};
use redis::{AsyncCommands, FromRedisValue, RedisResult, Value};
use serde::Serialize;
use utoipa::ToSchema;

use super::consumer::Completion;
use super::keys::{Keys, WORKERS_GROUP};
use super::request::field;
use super::scripts::{
    self, DeadLetterArgs, DeadLetterIndexArgs, DeadLetterKeys, Purge, Replay, ReplayKeys,
};
use crate::domain::{RequestId, WorkflowName};

/// Most dead letters one page lists.
pub const MAX_PAGE: usize = 500;

/// One dead letter, as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    "entry_id": "1764045212140-0",
    "reason": "StateMachineDoesNotExist: State Machine Does Not Exist",
    "dead_lettered_at": "2026-11-25T04:33:32.140Z",
    "accepted_at": "2026-11-25T04:33:32.123Z",
    "owner": "https://idp.example.com billing-service",
    "client_id": "billing-service",
    "input": "{\"order\":42}"
}))]
pub struct DeadLetter {
    /// The request id, or `entry:<queue entry id>` for an entry that could not be read.
    pub id: String,
    /// Position in the dead-letter stream (the pagination cursor).
    pub entry_id: String,
    /// Why it cannot start.
    pub reason: String,
    /// When it was dead-lettered (RFC 3339).
    pub dead_lettered_at: String,
    /// When the request was accepted (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub accepted_at: Option<String>,
    /// `<issuer> <subject>` of the caller that triggered it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub owner: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub client_id: Option<String>,
    /// The execution input, as the caller sent it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub input: Option<String>,
}

impl DeadLetter {
    fn from_entry(entry: &StreamId) -> Self {
        let text = |name: &str| {
            entry
                .map
                .get(name)
                .and_then(|v| String::from_redis_value(v).ok())
        };
        let id = text(field::REQUEST_ID).unwrap_or_else(|| {
            format!(
                "entry:{}",
                text("queue_entry").unwrap_or_else(|| entry.id.clone())
            )
        });
        Self {
            id,
            entry_id: entry.id.clone(),
            reason: text("reason").unwrap_or_default(),
            dead_lettered_at: text("dead_lettered_at").unwrap_or_default(),
            accepted_at: text(field::ACCEPTED_AT),
            owner: text(field::OWNER),
            client_id: text(field::CLIENT_ID).filter(|c| !c.is_empty()),
            input: text(field::INPUT),
        }
    }

    /// The request id, unless this is an unreadable entry.
    pub fn request_id(&self) -> Option<RequestId> {
        RequestId::parse(&self.id).ok()
    }
}

/// The index field of an entry: its request id, or `entry:<id>` when it has none.
pub fn index_field(request_id: Option<&RequestId>, entry_id: &str) -> String {
    request_id.map_or_else(|| format!("entry:{entry_id}"), ToString::to_string)
}

/// Moves queue entry `entry_id` into the dead letters with `reason` (the drain's side).
/// `true` when this call moved it; `false` when another delivery of it already had.
pub async fn dead_letter(
    redis: &mut RedisConnection,
    keys: &Keys,
    completion: &Completion<'_>,
    reason: &str,
) -> RedisResult<bool> {
    let workflow = completion.workflow;
    let request_id = completion.request_id;
    let script_keys = DeadLetterKeys {
        queue: keys.queue(workflow),
        dead_letters: keys.dead_letters(workflow),
        dead_letter_index: keys.dead_letter_index(workflow),
        status: status_key(keys, workflow, request_id, Keys::status),
        legacy_status: status_key(keys, workflow, request_id, Keys::request),
        attempt: request_id.map_or_else(|| keys.unused(workflow), |id| keys.attempt(id)),
        outbox: keys.audit_outbox(workflow),
    };
    let index_field = index_field(request_id, completion.entry_id);
    let (event, mac) = completion.event();
    let args = DeadLetterArgs {
        group: WORKERS_GROUP,
        entry_id: completion.entry_id,
        index_field: &index_field,
        reason,
        now: completion.now,
        now_ms: crate::clock::unix_ms_from_rfc3339(completion.now),
        event,
        mac,
    };
    let moved: i64 = scripts::DeadLetter::invocation(script_keys, &args)
        .invoke_async(redis)
        .await?;
    Ok(moved == 1)
}

/// Up to `limit` dead letters of `workflow`, oldest first, after entry `after` (exclusive;
/// `None` from the start).
pub async fn list(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    after: Option<&str>,
    limit: usize,
) -> RedisResult<Vec<DeadLetter>> {
    let start = after.map_or_else(|| "-".to_owned(), |id| format!("({id}"));
    let reply: StreamRangeReply = redis
        .xrange_count(
            keys.dead_letters(workflow),
            start,
            "+",
            limit.clamp(1, MAX_PAGE),
        )
        .await?;
    Ok(reply.ids.iter().map(DeadLetter::from_entry).collect())
}

/// How many dead letters `workflow` holds.
pub async fn count(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
) -> RedisResult<u64> {
    redis.xlen(keys.dead_letters(workflow)).await
}

/// Puts dead letter `id` back into the queue, writing its `audited` event into the outbox
/// with the move; the new queue entry id, or `None` when there is no such dead letter.
pub async fn replay(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    id: &str,
    now: &str,
    audited: Option<&SealedEvent>,
) -> RedisResult<Option<String>> {
    let (event, mac) = SealedEvent::args(audited);
    let args = DeadLetterIndexArgs {
        index_field: id,
        now,
        now_ms: crate::clock::unix_ms_from_rfc3339(now),
        event,
        mac,
    };
    let reply: Value = Replay::invocation(replay_keys(keys, workflow, id), &args)
        .invoke_async(redis)
        .await?;
    Ok(Option::<String>::from_redis_value(&reply).unwrap_or(None))
}

/// The keys of the scripts that move dead letter `id` (purge leaves out the queue).
fn replay_keys(keys: &Keys, workflow: &WorkflowName, id: &str) -> ReplayKeys {
    let request_id = request_id_of(workflow, id);
    ReplayKeys {
        dead_letters: keys.dead_letters(workflow),
        dead_letter_index: keys.dead_letter_index(workflow),
        queue: keys.queue(workflow),
        status: status_key(keys, workflow, request_id.as_ref(), Keys::status),
        legacy_status: status_key(keys, workflow, request_id.as_ref(), Keys::request),
        outbox: keys.audit_outbox(workflow),
    }
}

/// Drops dead letter `id` for good, writing its `audited` event into the outbox with the
/// drop; `false` when there is no such dead letter.
pub async fn purge(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
    id: &str,
    now: &str,
    audited: Option<&SealedEvent>,
) -> RedisResult<bool> {
    let (event, mac) = SealedEvent::args(audited);
    let args = DeadLetterIndexArgs {
        index_field: id,
        now,
        now_ms: crate::clock::unix_ms_from_rfc3339(now),
        event,
        mac,
    };
    let removed: i64 = Purge::invocation(replay_keys(keys, workflow, id).into(), &args)
        .invoke_async(redis)
        .await?;
    Ok(removed == 1)
}

/// The dead letters' ids per workflow, for `--all` operations: every id at the time of the
/// call, read page by page.
pub async fn all_ids(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
) -> RedisResult<Vec<String>> {
    let mut ids = Vec::new();
    let mut after: Option<String> = None;
    loop {
        let page = list(redis, keys, workflow, after.as_deref(), MAX_PAGE).await?;
        let Some(last) = page.last() else {
            return Ok(ids);
        };
        after = Some(last.entry_id.clone());
        ids.extend(page.into_iter().map(|d| d.id));
    }
}

/// A request id of `workflow` (ids of other workflows are not this workflow's dead letters).
fn request_id_of(workflow: &WorkflowName, id: &str) -> Option<RequestId> {
    RequestId::parse(id)
        .ok()
        .filter(|r| r.workflow() == workflow)
}

/// The request's `key` (its status, or the hash an earlier version kept it in); a key that
/// is never written for an entry without one (every key a script touches must be declared,
/// in the workflow's slot).
fn status_key(
    keys: &Keys,
    workflow: &WorkflowName,
    request_id: Option<&RequestId>,
    key: fn(&Keys, &RequestId) -> String,
) -> String {
    request_id.map_or_else(|| keys.unused(workflow), |id| key(keys, id))
}
