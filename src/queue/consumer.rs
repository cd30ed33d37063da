//! The drain's side of a workflow queue: consumer-group reads, reclaim, completion.
//!
//! # Redis Streams in brief
//! An entry read with `XREADGROUP ... >` is delivered to one consumer of the group and stays
//! in the group's pending list until `XACK`. If the consumer dies first, the entry stays
//! pending; `XAUTOCLAIM` hands entries idle longer than a bound to another consumer. The
//! drain acknowledges only after Step Functions answered, so an entry is never lost; a
//! redelivered entry reuses the deterministic execution name, so it never starts twice.

use crate::redis_conn::RedisConnection;
use redis::streams::{
    StreamAutoClaimOptions, StreamAutoClaimReply, StreamId, StreamReadOptions, StreamReadReply,
};
use redis::{AsyncCommands, RedisResult};

use super::dead_letters;
use super::keys::{Keys, WORKERS_GROUP};
use super::request::{EntryError, QueuedRequest, RequestState, StoredStatus};
use super::scripts::{
    Complete, CompleteArgs, CompleteKeys, PruneConsumers, PruneConsumersArgs, PruneConsumersKeys,
};
use crate::audit::outbox::SealedEvent;
use crate::domain::{RequestId, WorkflowName};

/// One entry handed to this consumer.
#[derive(Debug)]
pub struct Delivery {
    pub entry_id: String,
    /// `Err` for an entry that cannot be read (it can never be started).
    pub request: Result<QueuedRequest, EntryError>,
}

impl From<StreamId> for Delivery {
    fn from(entry: StreamId) -> Self {
        Self {
            request: QueuedRequest::from_fields(&entry.map),
            entry_id: entry.id,
        }
    }
}

/// How a delivery ended for good.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// Step Functions started the execution (now, or on an earlier delivery).
    Started { execution_arn: String },
    /// It can never start as it is: moved to the dead letters.
    DeadLettered { reason: String },
    /// It may or may not have started, and is not tried again (an EXPRESS workflow's
    /// `at_most_once`): the request ends `failed`.
    Failed { reason: String },
}

/// Creates the workers' group on `queue` (and the stream), tolerating an existing group.
pub async fn ensure_group(redis: &mut RedisConnection, queue: &str) -> RedisResult<()> {
    let created: RedisResult<()> = redis
        .xgroup_create_mkstream(queue, WORKERS_GROUP, "0")
        .await;
    match created {
        Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
        other => other,
    }
}

/// Reads up to `count` entries for `consumer`: new ones when `pending_after` is `None`;
/// otherwise those already delivered to this consumer name and not yet acknowledged, with
/// ids after `pending_after` (`"0"` for all).
pub async fn read_from(
    redis: &mut RedisConnection,
    queue: &str,
    consumer: &str,
    count: usize,
    block_ms: usize,
    pending_after: Option<&str>,
) -> RedisResult<Vec<Delivery>> {
    let mut options = StreamReadOptions::default()
        .group(WORKERS_GROUP, consumer)
        .count(count);
    if pending_after.is_none() {
        options = options.block(block_ms);
    }
    let start = pending_after.unwrap_or(">");
    let reply: Option<StreamReadReply> = redis.xread_options(&[queue], &[start], &options).await?;
    Ok(reply
        .into_iter()
        .flat_map(|r| r.keys)
        .flat_map(|k| k.ids)
        .map(Delivery::from)
        .collect())
}

/// Takes over entries pending longer than `min_idle_ms` on any consumer (a crashed one, or
/// this one after retries ran out). Returns the cursor for the next call (`0-0` = done).
pub async fn claim_stale(
    redis: &mut RedisConnection,
    queue: &str,
    consumer: &str,
    min_idle_ms: u64,
    cursor: &str,
    count: usize,
) -> RedisResult<(String, Vec<Delivery>)> {
    let options = StreamAutoClaimOptions::default().count(count);
    let reply: StreamAutoClaimReply = redis
        .xautoclaim_options(queue, WORKERS_GROUP, consumer, min_idle_ms, cursor, options)
        .await?;
    Ok((
        reply.next_stream_id,
        reply.claimed.into_iter().map(Delivery::from).collect(),
    ))
}

/// One delivery's outcome as it is recorded.
pub struct Completion<'a> {
    pub workflow: &'a WorkflowName,
    /// `None` for an entry that could not be read.
    pub request_id: Option<&'a RequestId>,
    pub entry_id: &'a str,
    pub now: &'a str,
    /// How long the request's status is kept once it ended here (started or failed).
    pub finished_ttl: std::time::Duration,
    /// The outcome's audit event, sealed for the workflow's outbox (`None`: the audit is
    /// off): written by the same script that records the outcome.
    pub event: Option<&'a SealedEvent>,
}

impl Completion<'_> {
    /// The key of the request's `key` (`unused` for an unreadable entry, which has no
    /// request: the never-written key keeps the scripts simple).
    fn request_key(&self, keys: &Keys, key: fn(&Keys, &RequestId) -> String) -> String {
        self.request_id
            .map_or_else(|| keys.unused(self.workflow), |id| key(keys, id))
    }

    /// The sealed event's JSON and seal, `''` for none.
    pub(super) fn event(&self) -> (&str, &str) {
        SealedEvent::args(self.event)
    }
}

/// Records the outcome: the request's status, the entry removed from the queue (into the
/// dead letters, for a dead letter), and its audit event in the outbox. `true` when this
/// call recorded it; `false` when another delivery of the same entry already had.
pub async fn complete(
    redis: &mut RedisConnection,
    keys: &Keys,
    completion: &Completion<'_>,
    outcome: &Outcome,
) -> RedisResult<bool> {
    match outcome {
        Outcome::DeadLettered { reason } => {
            dead_letters::dead_letter(redis, keys, completion, reason).await
        }
        Outcome::Started { execution_arn } => {
            let ended = (RequestState::Started, execution_arn.as_str(), "");
            complete_as(redis, keys, completion, ended).await
        }
        Outcome::Failed { reason } => {
            let ended = (RequestState::Failed, "", reason.as_str());
            complete_as(redis, keys, completion, ended).await
        }
    }
}

/// Acknowledges and deletes the entry, setting its request's state, execution ARN and
/// failure (`''` where they do not apply); `true` when this call acknowledged it.
async fn complete_as(
    redis: &mut RedisConnection,
    keys: &Keys,
    completion: &Completion<'_>,
    (state, execution_arn, failure): (RequestState, &str, &str),
) -> RedisResult<bool> {
    let script_keys = CompleteKeys {
        queue: keys.queue(completion.workflow),
        status: completion.request_key(keys, Keys::status),
        legacy_status: completion.request_key(keys, Keys::request),
        attempt: completion.request_key(keys, Keys::attempt),
        outbox: keys.audit_outbox(completion.workflow),
    };
    let (event, mac) = completion.event();
    let stored_arn = completion
        .request_id
        .map_or(execution_arn.to_owned(), |id| {
            StoredStatus::store_arn(execution_arn, id)
        });
    let args = CompleteArgs {
        group: WORKERS_GROUP,
        entry_id: completion.entry_id,
        state: state.as_str(),
        updated_at: completion.now,
        updated_ms: crate::clock::unix_ms_from_rfc3339(completion.now),
        execution_arn,
        stored_arn: &stored_arn,
        failure,
        finished_ttl: completion.finished_ttl.as_secs().max(1),
        event,
        mac,
    };
    let acked: i64 = Complete::invocation(script_keys, &args)
        .invoke_async(redis)
        .await?;
    Ok(acked == 1)
}

/// Resets the idle time of `entry_id`, pending for `consumer` (`XCLAIM` to itself), so no
/// other consumer takes over a live delivery; `false` when the entry is no longer pending.
pub async fn renew(
    redis: &mut RedisConnection,
    queue: &str,
    consumer: &str,
    entry_id: &str,
) -> RedisResult<bool> {
    let renewed: Vec<String> = redis::cmd("XCLAIM")
        .arg(queue)
        .arg(WORKERS_GROUP)
        .arg(consumer)
        .arg(0)
        .arg(entry_id)
        .arg("JUSTID")
        .query_async(redis)
        .await?;
    Ok(!renewed.is_empty())
}

/// Whether `workflow` has nothing left to start: no entry in its queue (waiting or in
/// flight: completed entries are deleted), none held for release, no deferred trigger due
/// (by this process' clock). Triggers only move from the held and deferred sets into the
/// queue, so the sets are read first: a release or promotion between the reads shows in
/// one or the other.
pub async fn is_settled(
    redis: &mut RedisConnection,
    keys: &Keys,
    workflow: &WorkflowName,
) -> RedisResult<bool> {
    let (held, due, queued): (u64, u64, u64) = redis::pipe()
        .zcard(keys.held(workflow))
        .zcount(keys.deferred(workflow), "-inf", crate::clock::unix_ms())
        .xlen(keys.queue(workflow))
        .query_async(redis)
        .await?;
    Ok(queued + held + due == 0)
}

/// Removes the group's consumers (other than `keep`) idle at least `min_idle` with no entry
/// pending: those of stopped processes. Returns how many.
pub async fn prune_idle(
    redis: &mut RedisConnection,
    queue: &str,
    keep: &str,
    min_idle: std::time::Duration,
) -> RedisResult<u64> {
    PruneConsumers::invocation(
        PruneConsumersKeys {
            queue: queue.to_owned(),
        },
        &PruneConsumersArgs {
            group: WORKERS_GROUP,
            keep,
            min_idle_ms: min_idle.as_millis() as u64,
        },
    )
    .invoke_async(redis)
    .await
}
