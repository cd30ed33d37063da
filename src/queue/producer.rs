//! Admission: writes an accepted trigger to its workflow's queue.

use redis::Script;
use redis::aio::ConnectionManager;
use std::sync::LazyLock;

use super::keys::Keys;
use super::request::QueuedRequest;

static ENQUEUE: LazyLock<Script> = LazyLock::new(|| Script::new(include_str!("enqueue.lua")));

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

    /// Queues `request` and creates its `queued` status; returns the stream entry id once
    /// Redis has executed the write.
    #[tracing::instrument(skip_all, name = "enqueue", fields(request.id = %request.request_id))]
    pub async fn enqueue(&self, request: &QueuedRequest) -> redis::RedisResult<String> {
        let id = &request.request_id;
        ENQUEUE
            .key(self.keys.queue(id.workflow()))
            .key(self.keys.request(id))
            .arg(id.to_string())
            .arg(&request.input)
            .arg(&request.owner)
            .arg(request.client_id.as_deref().unwrap_or(""))
            .arg(&request.accepted_at)
            .arg(self.status_ttl_seconds)
            .invoke_async(&mut self.redis.clone())
            .await
    }
}
