//! Appends audit events to the chain in Redis, in order, in batches.
//!
//! Request handlers and the drain hand events to [`AuditLog::record`], which never blocks
//! them; one writer task per process chains, signs and appends them. Batching keeps the
//! chain (inherently sequential) off the request path's critical section. While Redis is
//! unreachable the writer retries, holding events in its bounded channel.

use std::sync::Arc;
use std::sync::LazyLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::redis_conn::RedisConnection;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use redis::Script;
use tokio::sync::{mpsc, oneshot};

use super::record::{AuditEvent, GENESIS_HASH, sha256_hex};
use super::signer::AuditSigner;
use crate::queue::Keys;

static APPEND: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("append.lua")));

/// Events waiting for the writer at most; beyond this, new events are dropped and counted.
const CHANNEL_CAPACITY: usize = 16_384;
/// Events appended by one script call at most.
const MAX_BATCH: usize = 512;
const RETRY_MAX: Duration = Duration::from_secs(5);

enum Message {
    Event(Box<AuditEvent>),
    Flush(oneshot::Sender<()>),
}

/// A handle to the audit trail; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Message>,
    dropped: Arc<AtomicU64>,
}

/// The task that owns the chain's head for this process.
pub struct AuditWriter {
    rx: mpsc::Receiver<Message>,
    redis: RedisConnection,
    keys: Keys,
    signer: AuditSigner,
    /// `(seq, hash)` of the newest record as last seen; `None` until read from Redis.
    head: Option<(u64, String)>,
}

impl AuditLog {
    pub fn new(redis: RedisConnection, keys: Keys, signer: AuditSigner) -> (Self, AuditWriter) {
        let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
        let log = Self {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        };
        (
            log,
            AuditWriter {
                rx,
                redis,
                keys,
                signer,
                head: None,
            },
        )
    }

    /// Queues `event` for the trail without waiting.
    pub fn record(&self, event: AuditEvent) {
        if self.tx.try_send(Message::Event(Box::new(event))).is_err() {
            let dropped = self.dropped.fetch_add(1, Ordering::Relaxed) + 1;
            tracing::error!(
                audit.dropped = dropped,
                "audit event dropped: the writer is behind or stopped"
            );
        }
    }

    /// Waits until every event recorded before this call is in Redis.
    pub async fn flush(&self) {
        let (done, wait) = oneshot::channel();
        if self.tx.send(Message::Flush(done)).await.is_ok() {
            let _ = wait.await;
        }
    }
}

impl AuditWriter {
    /// Runs until every [`AuditLog`] handle is dropped and all queued events are written.
    pub async fn run(mut self) {
        let mut batch = Vec::with_capacity(MAX_BATCH);
        let mut waiting = Vec::new();
        while let Some(first) = self.rx.recv().await {
            let mut next = Some(first);
            while let Some(message) = next {
                match message {
                    Message::Event(event) => batch.push(*event),
                    Message::Flush(done) => waiting.push(done),
                }
                next = if batch.len() < MAX_BATCH {
                    self.rx.try_recv().ok()
                } else {
                    None
                };
            }
            if !batch.is_empty() {
                self.append_until_written(&batch).await;
                batch.clear();
            }
            for done in waiting.drain(..) {
                let _ = done.send(());
            }
        }
    }

    async fn append_until_written(&mut self, events: &[AuditEvent]) {
        let mut pause = Duration::from_millis(50);
        loop {
            match self.append(events).await {
                Ok(()) => return,
                Err(e) => {
                    tracing::warn!(error = %e, events = events.len(), "audit append failed; retrying");
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(RETRY_MAX);
                }
            }
        }
    }

    /// Chains `events` after the head, signs them and appends them with compare-and-set;
    /// when another writer moved the head first, re-chains on the new head.
    async fn append(&mut self, events: &[AuditEvent]) -> redis::RedisResult<()> {
        loop {
            let (seq, hash) = match self.head.clone() {
                Some(head) => head,
                None => self.read_head().await?,
            };
            let mut invocation = APPEND.prepare_invoke();
            invocation
                .key(self.keys.audit_head())
                .key(self.keys.audit_log());
            let mut prev = hash.clone();
            let mut pairs = Vec::with_capacity(events.len());
            for (i, event) in events.iter().enumerate() {
                let body = event.body(seq + 1 + i as u64, &prev, self.signer.kid());
                prev = sha256_hex(&body);
                let sig = BASE64.encode(self.signer.sign(&body));
                pairs.push((body, sig));
            }
            let new_seq = seq + events.len() as u64;
            invocation.arg(seq).arg(&hash).arg(new_seq).arg(&prev);
            for (body, sig) in &pairs {
                invocation.arg(body.as_slice()).arg(sig);
            }
            let reply: Vec<String> = invocation.invoke_async(&mut self.redis).await?;
            match reply.as_slice() {
                [ok] if ok == "ok" => {
                    self.head = Some((new_seq, prev));
                    return Ok(());
                }
                [_, seq, hash] => {
                    let seq = seq.parse().unwrap_or(0);
                    let hash = if seq == 0 {
                        GENESIS_HASH.to_owned()
                    } else {
                        hash.clone()
                    };
                    self.head = Some((seq, hash));
                }
                _ => {
                    return Err(redis::RedisError::from((
                        redis::ErrorKind::TypeError,
                        "unexpected reply from the audit append script",
                    )));
                }
            }
        }
    }

    async fn read_head(&mut self) -> redis::RedisResult<(u64, String)> {
        let (seq, hash): (Option<u64>, Option<String>) = redis::cmd("HMGET")
            .arg(self.keys.audit_head())
            .arg("seq")
            .arg("hash")
            .query_async(&mut self.redis)
            .await?;
        Ok(match (seq, hash) {
            (Some(seq), Some(hash)) if seq > 0 => (seq, hash),
            _ => (0, GENESIS_HASH.to_owned()),
        })
    }
}
