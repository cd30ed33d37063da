//! The handle request paths and the drain hold: events go to the writer task over a
//! bounded channel (backpressure, never a silent drop while the writer keeps up).

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use super::{AuditWriter, CHANNEL_CAPACITY, WriterSettings};
use crate::audit::outbox::{Outboxes, Seal, SealedEvent};
use crate::audit::record::AuditEvent;
use crate::audit::refusals::{RefusalAggregator, SharedRefusals};
use crate::audit::signer::AuditSigner;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;

pub(super) enum Message {
    /// An event, and who waits to hear it is in Redis.
    Event(Box<AuditEvent>, Option<oneshot::Sender<()>>),
    /// Everything before it in Redis (the outboxes relayed too), then tell the sender; the
    /// sender is dropped when the outboxes could not be relayed within the flush's patience.
    Flush(oneshot::Sender<()>),
    /// An outbox event was written here: relay soon rather than at the next poll.
    Nudge,
}

/// The event's record could not be written in time.
#[derive(Debug, thiserror::Error)]
#[error("the audit trail could not record the event in time")]
pub struct NotRecorded;

/// A handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    /// `None`: the audit is turned off (`audit.enabled = false`) and events go nowhere.
    tx: Option<mpsc::Sender<Message>>,
    buffer_wait: Duration,
    /// Refusals are counted here, before the channel: a flood of them takes no room in it.
    refusals: SharedRefusals,
    /// Seals events for the workflows' outboxes; `None` with the audit off.
    seal: Option<Seal>,
    /// Set by a nudge the writer has not relayed yet: further nudges send nothing, so a
    /// stream of admissions wakes the writer once per relay, not once per event.
    nudged: Arc<AtomicBool>,
}

impl AuditLog {
    pub fn new(
        redis: RedisConnection,
        keys: Keys,
        signer: AuditSigner,
        retired: Vec<AuditSigner>,
        settings: WriterSettings,
    ) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let keys_for_outboxes = keys.clone();
        let writer_key = keys.audit_writer(&uuid::Uuid::new_v4().simple().to_string());
        let refusals = SharedRefusals::new(RefusalAggregator::new(settings.refusal_window));
        let seal = Seal::of(&signer);
        let nudged = Arc::new(AtomicBool::new(false));
        let seals = std::iter::once(&signer)
            .chain(&retired)
            .map(Seal::of)
            .collect();
        (
            Self {
                tx: Some(tx),
                buffer_wait: settings.buffer_wait,
                refusals: refusals.clone(),
                seal: Some(seal),
                nudged: Arc::clone(&nudged),
            },
            AuditWriter {
                rx,
                refusals,
                redis,
                keys,
                signer,
                retired,
                settings,
                writer_key,
                batch: 0,
                head: None,
                outboxes: Outboxes::new(keys_for_outboxes, seals),
                nudged,
            },
        )
    }

    /// A handle that records nothing (`audit.enabled = false`, for measurements).
    pub fn disabled() -> Self {
        Self {
            tx: None,
            buffer_wait: Duration::ZERO,
            refusals: SharedRefusals::new(RefusalAggregator::new(Duration::ZERO)),
            seal: None,
            nudged: Arc::new(AtomicBool::new(false)),
        }
    }

    /// `event` sealed for its workflow's outbox, to be written by the script that makes the
    /// change it records; `None` with the audit off.
    pub fn seal(&self, event: &AuditEvent) -> Option<SealedEvent> {
        self.seal.as_ref().map(|seal| seal.seal(event))
    }

    /// Tells the writer that an outbox event was just written here, so it relays it now
    /// (any writer relays it within a poll anyway; a full channel is not waited on).
    pub fn nudge(&self) {
        if let Some(tx) = &self.tx
            && !self.nudged.swap(true, Ordering::AcqRel)
            && tx.try_send(Message::Nudge).is_err()
        {
            // Not delivered: the next nudge tries again (the poll relays meanwhile).
            self.nudged.store(false, Ordering::Release);
        }
    }

    /// Hands `event` to the writer, waiting for room while its buffer is full; a refusal
    /// that only counts in an open window is not sent at all.
    pub async fn record(&self, event: AuditEvent) {
        if self.tx.is_none() {
            return;
        }
        if !RefusalAggregator::aggregates(&event) {
            return self.send(event).await;
        }
        for event in self.refusals.take(event, Instant::now()) {
            self.send(event).await;
        }
    }

    async fn send(&self, event: AuditEvent) {
        let Some(tx) = &self.tx else {
            return;
        };
        let send = tx.send(Message::Event(Box::new(event), None));
        if !matches!(
            tokio::time::timeout(self.buffer_wait, send).await,
            Ok(Ok(()))
        ) {
            tracing::error!("audit event lost: the audit writer is stuck or stopped");
        }
    }

    /// Records `event` and waits until it is in Redis, at most `deadline`.
    pub async fn record_durably(
        &self,
        event: AuditEvent,
        deadline: Duration,
    ) -> Result<(), NotRecorded> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, written) = oneshot::channel();
        let wait = async {
            tx.send(Message::Event(Box::new(event), Some(done)))
                .await
                .map_err(|_| NotRecorded)?;
            written.await.map_err(|_| NotRecorded)
        };
        tokio::time::timeout(deadline, wait)
            .await
            .map_err(|_| NotRecorded)?
    }

    /// Waits until every event recorded before this call is in Redis, and every outbox entry
    /// written before it chained; `NotRecorded` when the writer is gone (it never will be)
    /// or could not get there within its patience (see `relay.rs`).
    pub async fn flush(&self) -> Result<(), NotRecorded> {
        let Some(tx) = &self.tx else {
            return Ok(());
        };
        let (done, wait) = oneshot::channel();
        tx.send(Message::Flush(done))
            .await
            .map_err(|_| NotRecorded)?;
        wait.await.map_err(|_| NotRecorded)
    }
}
