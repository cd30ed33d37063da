//! A started request's execution state, read through a short-lived cache in Redis: callers
//! polling `GET /v1/requests/{id}` (from any replica) cost Step Functions at most one
//! `DescribeExecution` per execution per `server.live_status_ttl_ms`, and none once the
//! execution has ended (an ended state never changes).

use std::time::Duration;

use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::RequestId;
use crate::queue::Keys;
use crate::redis_conn::RedisConnection;
use crate::worker::sfn::StepFunctions;

/// What Step Functions says of an execution.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, ToSchema)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ExecutionStatus {
    Running,
    Succeeded,
    Failed,
    TimedOut,
    Aborted,
    PendingRedrive,
}

impl ExecutionStatus {
    pub fn parse(raw: &str) -> Option<Self> {
        Some(match raw {
            "RUNNING" => Self::Running,
            "SUCCEEDED" => Self::Succeeded,
            "FAILED" => Self::Failed,
            "TIMED_OUT" => Self::TimedOut,
            "ABORTED" => Self::Aborted,
            "PENDING_REDRIVE" => Self::PendingRedrive,
            _ => return None,
        })
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Running => "RUNNING",
            Self::Succeeded => "SUCCEEDED",
            Self::Failed => "FAILED",
            Self::TimedOut => "TIMED_OUT",
            Self::Aborted => "ABORTED",
            Self::PendingRedrive => "PENDING_REDRIVE",
        }
    }

    /// Whether the execution has ended for good (a redrive starts from `FAILED` and goes
    /// through `PENDING_REDRIVE`, so `FAILED` can change; cached briefly like `RUNNING`).
    fn is_final(self) -> bool {
        matches!(self, Self::Succeeded | Self::TimedOut | Self::Aborted)
    }
}

/// How long cached states live.
#[derive(Debug, Clone, Copy)]
pub struct LiveStatusTtl {
    pub changing: Duration,
    pub ended: Duration,
}

/// The execution's state: from the cache, else from Step Functions (then cached). `None`
/// when Step Functions cannot say right now: the status answer goes out without it.
pub async fn live_status(
    redis: &mut RedisConnection,
    keys: &Keys,
    sfn: &dyn StepFunctions,
    request: &RequestId,
    role: Option<&str>,
    execution_arn: &str,
    ttl: LiveStatusTtl,
) -> Option<ExecutionStatus> {
    let key = keys.live_status(request);
    let cached: Option<String> = redis.get(&key).await.ok().flatten();
    if let Some(status) = cached.as_deref().and_then(ExecutionStatus::parse) {
        return Some(status);
    }
    let status = match sfn.execution_status(role, execution_arn).await {
        Ok(raw) => ExecutionStatus::parse(&raw)?,
        Err(e) => {
            tracing::warn!(execution.arn = %execution_arn, error = %e, "DescribeExecution failed; status answered without the live state");
            return None;
        }
    };
    let expiry = if status.is_final() {
        ttl.ended
    } else {
        ttl.changing
    };
    let stored: redis::RedisResult<()> = redis
        .pset_ex(&key, status.as_str(), expiry.as_millis().max(1) as u64)
        .await;
    if let Err(e) = stored {
        tracing::debug!(error = %e, "caching a live status failed");
    }
    Some(status)
}
