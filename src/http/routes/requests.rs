//! `GET /v1/requests/{request_id}`: follow an accepted trigger.

use std::collections::HashMap;

use axum::Json;
use axum::extract::{Path, State};
use redis::AsyncCommands;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::domain::RequestId;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Caller;
use crate::live_status::{ExecutionStatus, live_status};
use crate::queue::{RequestState, StoredStatus};
use crate::state::AppState;

/// Where a request is.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "request_id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    "workflow": "orders",
    "status": "started",
    "execution_arn": "arn:aws:states:us-east-1:123456789012:execution:orders:orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    "execution_status": "RUNNING",
    "created_at": "2026-11-25T04:33:32.123Z",
    "updated_at": "2026-11-25T04:33:32.140Z"
}))]
pub struct RequestStatus {
    pub request_id: String,
    pub workflow: String,
    pub status: RequestState,
    /// Set once started.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_arn: Option<String>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// When the request was accepted (RFC 3339).
    pub created_at: String,
    /// When the status last changed (RFC 3339).
    pub updated_at: String,
    /// For a deferred trigger: when it is due (RFC 3339).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_before: Option<String>,
    /// Once started: the execution's state as Step Functions reports it (reused for up to
    /// `server.live_status_ttl_ms`; absent when Step Functions cannot be asked right now).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub execution_status: Option<ExecutionStatus>,
}

/// Get the status of a request.
///
/// Only the caller that created the request (same issuer and subject) may read it; to anyone
/// else it does not exist.
#[utoipa::path(
    get,
    path = "/v1/requests/{request_id}",
    operation_id = "get_request",
    tag = "requests",
    params(("request_id" = String, Path, description = "As returned by the trigger")),
    responses(
        (status = 200, description = "The request's status", body = RequestStatus),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 404, description = "No such request for this caller (or it expired)", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn get_request(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    Path(raw): Path<String>,
) -> Result<Json<RequestStatus>, ApiError> {
    let id = RequestId::parse(&raw).map_err(|_| ApiError::NotFound)?;
    if !runtime.workflows.contains_key(id.workflow()) {
        return Err(ApiError::NotFound);
    }
    let stored = stored_status(&state, &id)
        .await?
        .ok_or(ApiError::NotFound)?;
    if !stored.is_owned_by(&caller.owner()) {
        return Err(ApiError::NotFound);
    }
    let not_before = (stored.not_before_ms > 0)
        .then(|| crate::clock::rfc3339_from_unix_ms(stored.not_before_ms));
    let status = visible_state(&stored, crate::clock::unix_ms());
    let execution_arn = stored.execution_arn(&id);
    let execution_status = match (&status, &execution_arn) {
        // EXPRESS executions cannot be described (AWS keeps no history of them to ask).
        (RequestState::Started, Some(arn)) if !describable(&state, &runtime, &id, arn) => None,
        (RequestState::Started, Some(arn)) => {
            let role = runtime
                .workflows
                .get(id.workflow())
                .and_then(|w| w.role_arn.as_deref());
            live_status(
                &mut state.redis.clone(),
                &state.keys,
                state.step_functions.client.as_ref(),
                &id,
                role,
                arn,
                state.live_status_ttl,
            )
            .await
        }
        _ => None,
    };
    Ok(Json(RequestStatus {
        execution_status,
        request_id: id.to_string(),
        workflow: id.workflow().to_string(),
        status,
        not_before,
        execution_arn,
        updated_at: stored.updated_at(),
        created_at: stored.created_at(),
        error: stored.error,
    }))
}

/// The request's stored status, if Redis still holds it (where an earlier version kept it,
/// until that expires).
pub(crate) async fn stored_status(
    state: &AppState,
    id: &RequestId,
) -> Result<Option<StoredStatus>, ApiError> {
    let mut redis = state.redis.clone();
    let unavailable = |e: redis::RedisError| ApiError::redis_unavailable(&e);
    let compact: Option<String> = match redis.get(state.keys.status(id)).await {
        Ok(compact) => compact,
        // Not a string: not a status of ours (someone else wrote it), so no such request.
        Err(e) if e.kind() == redis::ErrorKind::TypeError => return Ok(None),
        Err(e) => return Err(unavailable(e)),
    };
    if let Some(json) = compact {
        return Ok(StoredStatus::from_json(&json));
    }
    let legacy: HashMap<String, String> = redis
        .hgetall(state.keys.request(id))
        .await
        .map_err(unavailable)?;
    Ok(StoredStatus::from_legacy_hash(legacy))
}

/// The state a caller is shown: a deferred trigger that is due waits in the queue, whether
/// or not it has been moved yet.
pub(crate) fn visible_state(stored: &StoredStatus, now_ms: u64) -> RequestState {
    match stored.state {
        RequestState::Deferred if stored.not_before_ms <= now_ms => RequestState::Queued,
        state => state,
    }
}

/// Whether `DescribeExecution` can tell the state of `execution_arn`: not when it is an
/// EXPRESS execution (its ARN says `:express:`, or its state machine is known EXPRESS).
fn describable(
    state: &AppState,
    runtime: &crate::runtime::Runtime,
    id: &RequestId,
    execution_arn: &str,
) -> bool {
    let express = execution_arn.contains(":express:")
        || runtime
            .workflows
            .get(id.workflow())
            .is_some_and(|workflow| {
                state.step_functions.guarantees.known(workflow)
                    == Some(crate::worker::sfn::StateMachineType::Express)
            });
    !express
}
