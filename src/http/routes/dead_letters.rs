//! The admin API over a workflow's dead letters: list, replay, purge. Only callers the
//! `[admin]` policy allows; every replay and purge is audited with who did it.

use axum::Json;
use axum::extract::{Path, RawQuery, State};
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::{IntoParams, ToSchema};

use crate::audit::{AuditEvent, DeadLetterHandled, OperatorApi};
use crate::auth::Principal;
use crate::clock::now_rfc3339;
use crate::domain::WorkflowName;
use crate::http::admission::requested_name;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Caller;
use crate::http::query::QueryParams;
use crate::policy::{Decision, authorize};
use crate::queue::dead_letters::{self, DeadLetter, MAX_PAGE};
use crate::queue::{RequestState, is_stream_id};
use crate::runtime::Runtime;
use crate::state::AppState;

/// Dead letters listed when `limit` is not given.
const DEFAULT_PAGE: usize = 50;

/// Which page of dead letters; any other parameter is refused. (This describes the
/// parameters for the documentation; [`QueryParams`] reads them.)
#[derive(Debug, IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)]
pub struct PageQuery {
    /// List dead letters after this `entry_id` (the previous page's `next_after`).
    #[param(pattern = r"^[0-9]{1,20}-[0-9]{1,20}$")]
    pub after: Option<String>,
    /// At most this many (1 to 500; default 50).
    #[param(minimum = 1, maximum = 500)]
    pub limit: Option<usize>,
}

/// One page of a workflow's dead letters, oldest first.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "workflow": "orders",
    "total": 1,
    "dead_letters": [{
        "id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
        "entry_id": "1764045212140-0",
        "reason": "AccessDeniedException: not authorized to perform states:StartExecution",
        "dead_lettered_at": "2026-11-25T04:33:32.140Z"
    }]
}))]
pub struct DeadLetterPage {
    pub workflow: String,
    /// How many dead letters the workflow holds in all.
    pub total: u64,
    pub dead_letters: Vec<DeadLetter>,
    /// Pass as `after` for the next page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub next_after: Option<String>,
}

/// A dead letter put back into its queue.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    "status": "queued",
    "status_url": "/v1/requests/orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b"
}))]
pub struct Replayed {
    pub id: String,
    pub status: RequestState,
    /// Where the request's status can be followed (by the caller that triggered it).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status_url: Option<String>,
}

/// List a workflow's dead letters.
///
/// Triggers that could not start as they are (missing state machine, access denied,
/// refused input, a name taken with another input, or still failing after
/// `worker.retry_max_age_seconds`), each with the reason.
#[utoipa::path(
    get,
    path = "/v1/admin/workflows/{workflow}/dead-letters",
    operation_id = "list_dead_letters",
    tag = "admin",
    params(("workflow" = String, Path, description = "The workflow's name"), PageQuery),
    responses(
        (status = 200, description = "One page of dead letters", body = DeadLetterPage),
        (status = 400, description = "Invalid `after` or `limit`", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 403, description = "The `[admin]` policy does not allow this caller", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 404, description = "No such workflow", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_dead_letters(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    Path(workflow): Path<String>,
    RawQuery(query): RawQuery,
) -> Result<Json<DeadLetterPage>, ApiError> {
    let workflow = authorize_admin(&state, &runtime, &caller, &workflow).await?;
    let page = QueryParams::parse(query.as_deref(), &["after", "limit"], &[])?;
    let after = page.one("after");
    if after.is_some_and(|after| !is_stream_id(after)) {
        return Err(ApiError::InvalidParameter(
            "`after` must be an entry_id such as 1764045212140-0".into(),
        ));
    }
    let limit = page.limit(DEFAULT_PAGE, MAX_PAGE)?;
    let mut redis = state.redis.clone();
    let unavailable = |e: redis::RedisError| ApiError::redis_unavailable(&e);
    let listed = dead_letters::list(&mut redis, &state.keys, &workflow, after, limit)
        .await
        .map_err(unavailable)?;
    let total = dead_letters::count(&mut redis, &state.keys, &workflow)
        .await
        .map_err(unavailable)?;
    let next_after = (listed.len() == limit)
        .then(|| listed.last().map(|d| d.entry_id.clone()))
        .flatten();
    Ok(Json(DeadLetterPage {
        workflow: workflow.to_string(),
        total,
        dead_letters: listed,
        next_after,
    }))
}

/// Replay a dead letter.
///
/// Puts it back into the workflow's queue with its original request id, input and owner.
/// The execution name is the request id, so a replay can never start a second execution.
#[utoipa::path(
    post,
    path = "/v1/admin/workflows/{workflow}/dead-letters/{id}/replay",
    operation_id = "replay_dead_letter",
    tag = "admin",
    params(
        ("workflow" = String, Path, description = "The workflow's name"),
        ("id" = String, Path, description = "The dead letter's `id` (its request id)"),
    ),
    responses(
        (status = 200, description = "Back in the queue", body = Replayed),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 403, description = "The `[admin]` policy does not allow this caller", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 404, description = "No such workflow or dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn replay_dead_letter(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    Path((workflow, id)): Path<(String, String)>,
) -> Result<Json<Replayed>, ApiError> {
    let workflow = authorize_admin(&state, &runtime, &caller, &workflow).await?;
    let event =
        AuditEvent::dead_letter_by_caller(DeadLetterHandled::Replayed, &caller, &workflow, &id);
    dead_letters::replay(
        &mut state.redis.clone(),
        &state.keys,
        &workflow,
        &id,
        &now_rfc3339(),
        state.audit.seal(&event).as_ref(),
    )
    .await
    .map_err(|e| ApiError::redis_unavailable(&e))?
    .ok_or(ApiError::NotFound)?;
    state.audit.nudge();
    tracing::info!(workflow = %workflow, dead_letter = %id, subject = %caller.subject, "dead letter replayed");
    let is_request = id.starts_with(&format!("{workflow}_"));
    Ok(Json(Replayed {
        status_url: is_request.then(|| format!("/v1/requests/{id}")),
        id,
        status: RequestState::Queued,
    }))
}

/// Purge a dead letter.
///
/// Drops it for good; its request's status becomes `failed`.
#[utoipa::path(
    delete,
    path = "/v1/admin/workflows/{workflow}/dead-letters/{id}",
    operation_id = "purge_dead_letter",
    tag = "admin",
    params(
        ("workflow" = String, Path, description = "The workflow's name"),
        ("id" = String, Path, description = "The dead letter's `id` (its request id)"),
    ),
    responses(
        (status = 204, description = "Purged"),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 403, description = "The `[admin]` policy does not allow this caller", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 404, description = "No such workflow or dead letter", body = Problem, content_type = "application/problem+json"),
        (status = 503, description = "Redis is unavailable", body = Problem, content_type = "application/problem+json",
            headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn purge_dead_letter(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    Path((workflow, id)): Path<(String, String)>,
) -> Result<StatusCode, ApiError> {
    let workflow = authorize_admin(&state, &runtime, &caller, &workflow).await?;
    let event =
        AuditEvent::dead_letter_by_caller(DeadLetterHandled::Purged, &caller, &workflow, &id);
    let purged = dead_letters::purge(
        &mut state.redis.clone(),
        &state.keys,
        &workflow,
        &id,
        &now_rfc3339(),
        state.audit.seal(&event).as_ref(),
    )
    .await
    .map_err(|e| ApiError::redis_unavailable(&e))?;
    if !purged {
        return Err(ApiError::NotFound);
    }
    state.audit.nudge();
    tracing::info!(workflow = %workflow, dead_letter = %id, subject = %caller.subject, "dead letter purged");
    Ok(StatusCode::NO_CONTENT)
}

/// The workflow, if the `[admin]` policy allows `caller` (a refusal is audited). Unlike
/// triggers, an admin may learn that a workflow does not exist (404).
async fn authorize_admin(
    state: &AppState,
    runtime: &Runtime,
    caller: &Principal,
    raw: &str,
) -> Result<WorkflowName, ApiError> {
    if let Decision::Denied { reason } = authorize(caller, &runtime.admin) {
        let event = AuditEvent::operator_denied(
            OperatorApi::Admin,
            caller,
            Some(requested_name(raw)),
            &reason,
        );
        state.audit.record(event).await;
        return Err(ApiError::Forbidden(reason));
    }
    WorkflowName::parse(raw)
        .ok()
        .filter(|name| runtime.workflows.contains_key(name))
        .ok_or(ApiError::NotFound)
}
