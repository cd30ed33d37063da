//! Appends audit events to the shared chain in Redis, in order, in batches.
//!
//! Request handlers and the drain hand events to [`AuditLog`]; one writer task per process
//! chains, signs and appends them. Events written with a Redis state change go through the
//! workflows' outboxes instead (`super::outbox`), which every writer relays (`relay.rs`). Batching keeps the chain (inherently sequential) off the
//! request path's critical section. Nothing is dropped while the writer keeps up: a full
//! buffer makes callers wait (backpressure) instead. While Redis is unreachable the writer
//! retries the same batch, which the append script applies at most once.
//!
//! Key rotation: a writer holding the key the trail was signed with until now (one of
//! `retired`) first appends a `key_rotated` record signed by that key, introducing its own.
//! A writer that holds neither the active key nor a retired one cannot write (its records
//! would not verify) and says so.

use std::time::Duration;

use tokio::sync::mpsc;
use tokio::time::Instant;

use super::merkle::leaf_hash;
use super::outbox::{OutboxMove, Outboxes};
use super::record::{AuditEvent, sha256_hex};
use super::refusals::SharedRefusals;
use super::scripts::{Append, AppendArgs, AppendKeys};
use super::signer::AuditSigner;
use super::store::{self, ChainHead};
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;
use chain::Events;
use handle::Message;
pub use handle::{AuditLog, NotRecorded};

mod chain;
mod handle;
mod relay;

/// Events waiting for the writer at most; beyond this, callers wait.
const CHANNEL_CAPACITY: usize = 16_384;
/// Events appended by one script call at most.
const MAX_BATCH: usize = 512;
const RETRY_MAX: Duration = Duration::from_secs(5);
/// How often the writer looks into every outbox, for events another process wrote and did
/// not relay itself (it stopped, or its writer is behind); its own it relays soon.
const RELAY_POLL: Duration = Duration::from_millis(250);
/// How soon after a nudge (an outbox event written here) the writer relays: not at once, so
/// that under load one relay round (five round trips) moves a page of events rather than
/// one. The events are durable in Redis meanwhile; a flush relays at once.
const NUDGE_DELAY: Duration = Duration::from_millis(5);

/// How the writer checkpoints, and how long a caller waits for room in a full buffer.
#[derive(Debug, Clone, Copy)]
pub struct WriterSettings {
    /// A checkpoint at least every this many records…
    pub checkpoint_every: u64,
    /// …and, when records arrived since the last one, at least this often.
    pub checkpoint_interval: Duration,
    /// The longest [`AuditLog::record`] waits for room before it gives the event up (and
    /// logs an error): a stuck writer must not hang request handling forever.
    pub buffer_wait: Duration,
    /// Refusals of one source within this window become one record with a count.
    pub refusal_window: Duration,
}

impl Default for WriterSettings {
    fn default() -> Self {
        Self {
            checkpoint_every: 1_000,
            checkpoint_interval: Duration::from_secs(60),
            buffer_wait: Duration::from_secs(5),
            refusal_window: Duration::from_secs(10),
        }
    }
}

/// The task that appends this process's events.
pub struct AuditWriter {
    rx: mpsc::Receiver<Message>,
    refusals: SharedRefusals,
    redis: RedisConnection,
    keys: Keys,
    signer: AuditSigner,
    /// Keys that signed the trail before `signer`; used only to sign the rotation record.
    retired: Vec<AuditSigner>,
    settings: WriterSettings,
    /// Names this process's last appended batch in Redis.
    writer_key: String,
    batch: u64,
    /// The head as last seen; `None` until read from Redis (or after an ambiguous write).
    head: Option<ChainHead>,
    outboxes: Outboxes,
    /// Shared with the handles: a nudge is pending (cleared as a relay starts).
    nudged: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

/// What the messages taken ask of the relay.
enum Relay {
    /// Relayed already (a flush).
    Done,
    /// Nudged: relay within [`NUDGE_DELAY`].
    Soon,
    NotAsked,
}

/// Whose an append's records became.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Appended {
    Here,
    /// Another writer had moved these outbox events into the chain already.
    Elsewhere,
}

/// Why a batch could not be appended (it is retried).
#[derive(Debug, thiserror::Error)]
enum AppendError {
    #[error(transparent)]
    Redis(#[from] redis::RedisError),
    #[error(
        "the trail is signed with key {active}, which this process does not hold (it signs with \
         {ours}); configure {active}'s private key under audit.retired_keys to rotate to {ours}"
    )]
    ForeignKey { active: String, ours: String },
}

impl AuditWriter {
    /// Runs until every [`AuditLog`] handle is dropped and all queued events are written;
    /// checkpoints on time while idle, and relays the outboxes.
    pub async fn run(mut self) {
        let mut tick = tokio::time::interval(self.settings.checkpoint_interval / 4);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut poll = tokio::time::interval(RELAY_POLL);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        // When nudged: the relay due then (see NUDGE_DELAY).
        let mut relay_at: Option<Instant> = None;
        loop {
            let nudged = async {
                match relay_at {
                    Some(at) => tokio::time::sleep_until(at).await,
                    None => std::future::pending().await,
                }
            };
            let first = tokio::select! {
                message = self.rx.recv() => match message {
                    Some(message) => message,
                    None => {
                        // The last handle is gone: what was only counted is written too.
                        let counted = self.refusals.close_all();
                        self.append_in_batches(&counted).await;
                        // One try: at shutdown Redis may be gone; any writer relays later.
                        self.relay_outboxes().await;
                        return;
                    }
                },
                () = self.refusals.window_closed() => {
                    let closed = self.refusals.close_due(Instant::now());
                    self.append_in_batches(&closed).await;
                    continue;
                }
                _ = tick.tick() => {
                    if self.checkpoint_due() {
                        self.append_until_written(Events::Built(&[]), None).await;
                    }
                    continue;
                }
                _ = poll.tick() => {
                    relay_at = None;
                    self.relay_outboxes().await;
                    continue;
                }
                () = nudged => {
                    relay_at = None;
                    self.relay_outboxes().await;
                    continue;
                }
            };
            match self.take_messages(first).await {
                Relay::Done => relay_at = None,
                Relay::Soon => {
                    relay_at.get_or_insert_with(|| Instant::now() + NUDGE_DELAY);
                }
                Relay::NotAsked => {}
            }
        }
    }

    /// `first` and the messages waiting behind it, up to a batch: their events appended,
    /// the outboxes relayed when a flush asks, then whoever waits is told; whether a nudge
    /// asks for a relay still to come.
    async fn take_messages(&mut self, first: Message) -> Relay {
        let mut events = Vec::with_capacity(MAX_BATCH);
        let (mut waiting, mut flushing) = (Vec::new(), Vec::new());
        let mut nudged = false;
        let mut next = Some(first);
        // Bounded in messages as well as records (a flush can add many closed windows).
        let mut taken = 0;
        while let Some(message) = next {
            taken += 1;
            match message {
                Message::Event(event, done) => {
                    events.push(*event);
                    waiting.extend(done);
                }
                Message::Flush(done) => {
                    // Everything recorded before a flush is in Redis after it, counted
                    // refusals and outbox events included.
                    events.extend(self.refusals.close_all());
                    flushing.push(done);
                }
                Message::Nudge => nudged = true,
            }
            next = if taken < MAX_BATCH && events.len() < MAX_BATCH {
                self.rx.try_recv().ok()
            } else {
                None
            };
        }
        if !events.is_empty() {
            self.append_in_batches(&events).await;
        }
        for done in waiting {
            let _ = done.send(());
        }
        if flushing.is_empty() {
            return if nudged { Relay::Soon } else { Relay::NotAsked };
        }
        // A flush that could not be done is answered by dropping its sender.
        if self.relay_for_flush(&flushing).await {
            for done in flushing {
                let _ = done.send(());
            }
            Relay::Done
        } else {
            Relay::Soon
        }
    }

    /// Whether the time-based checkpoint is due, as far as this process knows.
    fn checkpoint_due(&self) -> bool {
        self.head.as_ref().is_some_and(|head| {
            head.seq > head.checkpoint_size
                && crate::clock::unix_ms().saturating_sub(head.checkpoint_ms)
                    >= self.settings.checkpoint_interval.as_millis() as u64
        })
    }

    /// Appends `events` in batches of at most [`MAX_BATCH`] (closing many refusal windows at
    /// once can yield more).
    async fn append_in_batches(&mut self, events: &[AuditEvent]) {
        for batch in events.chunks(MAX_BATCH) {
            self.append_until_written(Events::Built(batch), None).await;
        }
    }

    /// Appends `events` (moving `moving`'s outbox events into the chain, when given),
    /// retrying until Redis takes them.
    async fn append_until_written(
        &mut self,
        events: Events<'_>,
        moving: Option<&OutboxMove>,
    ) -> Appended {
        self.batch += 1;
        let mut pause = Duration::from_millis(50);
        loop {
            match self.append(events, moving).await {
                Ok(appended) => return appended,
                Err(e) => {
                    tracing::error!(error = %e, events = events.len(), "audit append failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Chains `events` after the head, signs them and appends them with compare-and-set;
    /// when another writer moved the head first, re-chains on the new head.
    async fn append(
        &mut self,
        events: Events<'_>,
        moving: Option<&OutboxMove>,
    ) -> Result<Appended, AppendError> {
        loop {
            let head = match self.head.take() {
                Some(head) => head,
                None => self.read_head().await?,
            };
            let Some(plan) = self.chain(&head, events, moving)? else {
                self.head = Some(head);
                return Ok(Appended::Here);
            };
            let keys = AppendKeys {
                head: self.keys.audit_head(),
                log: self.keys.audit_log(),
                checkpoints: self.keys.audit_checkpoints(),
                writer_batch: self.writer_key.clone(),
                relayed: self.keys.audit_relayed(),
            };
            let args = AppendArgs {
                expected_seq: head.seq,
                expected_hash: &head.hash,
                batch_id: self.batch,
                new_seq: plan.head.seq,
                new_hash: &plan.head.hash,
                kid: plan.head.kid.as_deref().unwrap_or_default(),
                frontier: plan.head.frontier.encode(),
                checkpoint_body: plan.checkpoint.as_ref().map_or("", |c| c.0.as_str()),
                checkpoint_sig: plan.checkpoint.as_ref().map_or("", |c| c.1.as_str()),
                now_ms: plan.head.checkpoint_ms,
                outbox: moving.map_or("", |m| m.workflow.as_str()),
                outbox_after: moving.map_or("", |m| m.after.as_str()),
                outbox_last: moving.map_or("", |m| m.last.as_str()),
                records: plan
                    .records
                    .iter()
                    .map(|(body, sig)| (body.as_slice(), sig.as_str()))
                    .collect(),
            };
            let started = std::time::Instant::now();
            let reply: Vec<Option<String>> = Append::invocation(keys, &args)
                .invoke_async(&mut self.redis)
                .await?;
            match reply.first().cloned().flatten().as_deref() {
                Some("ok") => {
                    plan.report_skipped(moving);
                    let registry = crate::metrics::metrics();
                    registry
                        .audit_append_duration
                        .observe(started.elapsed().as_secs_f64());
                    registry.audit_records.inc_by(plan.records.len() as u64);
                    if let Some((body, signature)) = &plan.checkpoint {
                        super::checkpoint::log_appended(body, signature);
                    }
                    self.head = Some(plan.head);
                    return Ok(Appended::Here);
                }
                // An earlier attempt of this batch went through; the head is unknown now, and
                // whichever checkpoint that attempt carried is logged from Redis.
                Some("done") => {
                    plan.report_skipped(moving);
                    if let Ok(Some(newest)) =
                        store::newest_checkpoint(&mut self.redis, &self.keys).await
                    {
                        super::checkpoint::log_appended(&newest.body, &newest.signature);
                    }
                    return Ok(Appended::Here);
                }
                // Another writer chained these outbox events first.
                Some("relayed") => {
                    self.head = Some(head);
                    return Ok(Appended::Elsewhere);
                }
                Some("conflict") => {
                    self.head = match ChainHead::from_fields(&reply[1..]) {
                        Some(head) => Some(head),
                        None => Some(self.rebuild_head().await?),
                    };
                }
                _ => {
                    return Err(AppendError::Redis(redis::RedisError::from((
                        redis::ErrorKind::TypeError,
                        "unexpected reply from the audit append script",
                    ))));
                }
            }
        }
    }

    async fn read_head(&mut self) -> Result<ChainHead, AppendError> {
        let fields = store::read_head_fields(&mut self.redis, &self.keys).await?;
        match ChainHead::from_fields(&fields) {
            Some(head) => Ok(head),
            None => self.rebuild_head().await,
        }
    }

    /// A trail written before heads held the Merkle frontier: derives it (and the active
    /// key) from the records, once.
    async fn rebuild_head(&mut self) -> Result<ChainHead, AppendError> {
        let records = store::read_all_records(&mut self.redis, &self.keys).await?;
        let mut head = ChainHead::empty();
        for record in &records {
            head.seq += 1;
            head.hash = sha256_hex(record.body.as_bytes());
            head.frontier.push(leaf_hash(record.body.as_bytes()));
            head.kid = serde_json::from_str::<serde_json::Value>(&record.body)
                .ok()
                .and_then(|body| body["kid"].as_str().map(str::to_owned));
        }
        tracing::info!(
            records = head.seq,
            "audit head rebuilt from the trail (written by an earlier version)"
        );
        Ok(head)
    }
}
