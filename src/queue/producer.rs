//! Admission: writes an accepted trigger to its workflow's queue.

use std::sync::LazyLock;

use redis::Script;
use redis::aio::ConnectionManager;

use super::keys::Keys;
use super::request::QueuedRequest;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("enqueue.lua")));

/// A one-time token to consume together with the write.
#[derive(Debug, Clone)]
pub struct OneTimeToken {
    /// A digest identifying the token (issuer and `jti`).
    pub id: String,
    /// How long the token could still be presented (its remaining life plus leeway).
    pub ttl_seconds: u64,
}

/// What admission did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Enqueued {
    /// Written; the stream entry id.
    Queued(String),
    /// Nothing written: the one-time token was used before.
    Replayed,
}

/// Appends accepted triggers to the workflow queues.
#[derive(Clone)]
pub struct Producer {
    redis: ConnectionManager,
    keys: Keys,
    status_ttl_seconds: u64,
}

impl Producer {
    pub fn new(redis: ConnectionManager, keys: Keys, status_ttl_seconds: u64) -> Self {
        Self {
            redis,
            keys,
            status_ttl_seconds,
        }
    }

    /// Queues `request` and creates its `queued` status, consuming `once` if given, in one
    /// atomic step; returns once Redis has executed it.
    #[tracing::instrument(skip_all, name = "enqueue", fields(request.id = %request.request_id))]
    pub async fn enqueue(
        &self,
        request: &QueuedRequest,
        once: Option<&OneTimeToken>,
    ) -> redis::RedisResult<Enqueued> {
        let id = &request.request_id;
        let mut invocation = ENQUEUE.prepare_invoke();
        invocation
            .key(self.keys.queue(id.workflow()))
            .key(self.keys.request(id));
        invocation
            .arg(id.to_string())
            .arg(&request.input)
            .arg(&request.owner)
            .arg(request.client_id.as_deref().unwrap_or(""))
            .arg(&request.accepted_at)
            .arg(self.status_ttl_seconds);
        if let Some(once) = once {
            invocation
                .key(self.keys.used_token(id.workflow(), &once.id))
                .arg(once.ttl_seconds.max(1));
        }
        let reply: String = invocation.invoke_async(&mut self.redis.clone()).await?;
        Ok(if reply == "replayed" {
            Enqueued::Replayed
        } else {
            Enqueued::Queued(reply)
        })
    }
}
