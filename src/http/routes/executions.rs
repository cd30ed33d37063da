//! `POST /v1/workflows/{workflow}/executions`: the trigger.

use axum::Json;
use axum::body::Body;
use axum::extract::{Extension, Path, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;

use crate::audit::EventKind;
use crate::auth::Principal;
use crate::clock::now_rfc3339;
use crate::config::Workflow;
use crate::domain::{RequestId, WorkflowName};
use crate::http::admission::{self, Admitted, Refusal};
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Caller;
use crate::http::listener::RequestDeadline;
use crate::http::trigger_body::{CreateExecution, Trigger};
use crate::policy::{Decision, authorize};
use crate::queue::{Placement, QueuedRequest, RequestState};
use crate::runtime::Runtime;
use crate::state::AppState;

/// The answer to an accepted trigger: the request is safely queued.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "request_id": "orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b",
    "status": "queued",
    "status_url": "/v1/requests/orders_0192f5c4e3b87d8e9a6b1c2d3e4f5a6b"
}))]
pub struct ExecutionAccepted {
    /// Identifies the request; also the Step Functions execution name.
    pub request_id: String,
    pub status: RequestState,
    /// Where to follow the request (`GET`).
    pub status_url: String,
}

/// Queue a new execution of a workflow.
///
/// The caller's token is verified and checked against the workflow's policy; an allowed
/// request is written to Redis and answered `202` only once Redis holds it. The execution
/// starts shortly after; follow it at `status_url`. An unknown workflow is answered exactly
/// like a forbidden one.
#[utoipa::path(
    post,
    path = "/v1/workflows/{workflow}/executions",
    operation_id = "create_execution",
    tag = "executions",
    params(
        ("workflow" = String, Path, description = "The workflow's configured name", example = "orders"),
        ("Idempotency-Key" = Option<String>, Header, description = "Makes retries safe: a retry with the same key \
            (per caller, for a day) for the same request (workflow, input bytes and timing; the envelope's layout does \
            not matter) gets `202` with the first request's id and its current status, and queues nothing; the same \
            key for another request gets 422. 1 to 255 visible ASCII characters."),
        ("x-request-id" = Option<String>, Header, description = "Correlates the request: echoed in the answer and \
            recorded in every audit record about it, `started` included. 1 to 128 visible ASCII characters; otherwise \
            stepgate sets a UUID."),
        ("X-Amzn-Trace-Id" = Option<String>, Header, description = "An AWS X-Ray trace header, passed to \
            `StartExecution` so the execution joins the caller's trace."),
        ("traceparent" = Option<String>, Header, description = "W3C trace context: where stepgate exports spans \
            (OpenTelemetry, a build with the `otlp` feature), the request's spans, and the drain's start of the \
            execution, join this trace."),
    ),
    request_body(content = CreateExecution, content_type = "application/json"),
    responses(
        (status = 202, description = "Queued; the execution starts shortly", body = ExecutionAccepted,
            headers(
                ("Location" = String, description = "The status URL"),
                ("x-request-id" = String, description = "The request's correlation id (the caller's, or the one stepgate set)"),
                ("Idempotent-Replayed" = String, description = "`true` when this answers a retry with the same Idempotency-Key"),
                ("RateLimit" = String, description = "The tightest rate limit's remaining quota, when the workflow has limits"),
                ("RateLimit-Policy" = String, description = "The workflow's rate limits, when it has any"),
            )),
        (status = 400, description = "Malformed JSON or Authorization header", body = Problem, content_type = "application/problem+json"),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 403, description = "The policy does not allow this caller (or no such workflow)", body = Problem,
            content_type = "application/problem+json", headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 413, description = "Body (or the workflow's input) larger than the limit", body = Problem, content_type = "application/problem+json"),
        (status = 408, description = "The body did not arrive within the request timeout; nothing was queued", body = Problem, content_type = "application/problem+json"),
        (status = 415, description = "Body is not application/json", body = Problem, content_type = "application/problem+json"),
        (status = 422, description = "The input fails the workflow's JSON Schema (`errors` lists each failing path), or the \
            Idempotency-Key was used with another request", body = Problem, content_type = "application/problem+json"),
        (status = 409, description = "`request_pending`: a retry with the Idempotency-Key of a request that is still held \
            for its audit record (`audit.fail_closed`) and may yet be withdrawn; retry after `Retry-After` for its outcome \
            (a 202 once it is accepted for good, or, if it was withdrawn, a new request)", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait"))),
        (status = 429, description = "A rate limit of the workflow is exhausted; nothing was queued", body = Problem,
            content_type = "application/problem+json", headers(
                ("Retry-After" = u64, description = "Seconds to wait"),
                ("RateLimit" = String, description = "The exhausted policy: `\"caller\";r=0;t=12` (draft-ietf-httpapi-ratelimit-headers)"),
                ("RateLimit-Policy" = String, description = "The workflow's policies: `\"caller\";q=100;w=60`"),
            )),
        (status = 503, description = "Redis or the identity provider is unavailable, or the workflow's backlog is full: nothing \
            was queued, except after a Redis timeout, which may follow the queueing (retry with the same Idempotency-Key to learn \
            which)", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn create_execution(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
    Path(workflow): Path<String>,
    headers: HeaderMap,
    deadline: Option<Extension<RequestDeadline>>,
    body: Body,
) -> Result<Response, ApiError> {
    let deadline = deadline.map(|d| d.0.0);
    let decided = admit(
        &state, &runtime, &caller, &workflow, &headers, deadline, body,
    )
    .await;
    let (request_id, status, quota) = match admission::record(&state, &caller, decided).await? {
        Admitted::New(trigger) => {
            state.export_backlog.admitted();
            let request_id = trigger.request.request_id.to_string();
            let deferred = trigger.placement == Placement::Deferred;
            tracing::info!(workflow = %trigger.workflow, request.id = %request_id, subject = %caller.subject, deferred, "trigger accepted");
            let status = if deferred {
                RequestState::Deferred
            } else {
                RequestState::Queued
            };
            (request_id, status, Some(trigger.quota))
        }
        // A retry answered with the earlier request as it is now.
        Admitted::Duplicate {
            workflow,
            request_id,
        } => {
            tracing::info!(workflow = %workflow, request.id = %request_id, "idempotent retry answered with the earlier request");
            let status = replayed_status(&state, &request_id).await?;
            (request_id, status, None)
        }
    };
    let replayed = quota.is_none();
    let accepted = ExecutionAccepted {
        status_url: format!("/v1/requests/{request_id}"),
        request_id,
        status,
    };
    let mut response = (
        StatusCode::ACCEPTED,
        [(header::LOCATION, accepted.status_url.clone())],
        Json(accepted),
    )
        .into_response();
    if let Some(quota) = quota {
        quota.apply(response.headers_mut());
    }
    if replayed {
        response
            .headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
    }
    Ok(response)
}

/// Everything a trigger must pass, in order, up to Redis' answer: nothing here writes to
/// the audit trail (the handler records the outcome, whichever it is).
async fn admit(
    state: &AppState,
    runtime: &Runtime,
    caller: &Principal,
    raw_workflow: &str,
    headers: &HeaderMap,
    deadline: Option<tokio::time::Instant>,
    body: Body,
) -> Result<Admitted, Refusal> {
    if !state.is_admitting() {
        return Err(Refusal::not_audited(ApiError::Unavailable {
            what: "this instance",
            detail: "shutting down".into(),
            retry_after_seconds: 1,
        }));
    }
    // Authorize before reading the body: an unauthorized caller cannot make us buffer it.
    let (workflow, rules) = authorize_trigger(runtime, caller, raw_workflow)?;
    // The trail's records wait in Redis for a sink that does not take them: admitting more
    // would fill Redis (and dropping records is never an option). Told only to callers the
    // workflow's policy allows.
    if state.export_backlog.over_cap() {
        return Err(Refusal::not_audited(ApiError::Unavailable {
            what: "admission",
            detail: "the audit trail's export is behind".into(),
            retry_after_seconds: 10,
        }));
    }
    let (request, ask_parts) =
        read_trigger(state, caller, &workflow, rules, headers, deadline, body)
            .await
            .map_err(Refusal::not_audited)?;
    let ask = admission::Ask {
        workflow: &workflow,
        due_ms: ask_parts.due_ms,
        idempotency_key: admission::idempotency_key(headers).map_err(Refusal::not_audited)?,
        fingerprint: ask_parts.fingerprint,
        legacy_fingerprint: ask_parts.legacy_fingerprint,
    };
    let mut checks = admission::checks(runtime, rules, caller, &ask, state.idempotency_ttl)
        .map_err(|e| match e {
            ApiError::InvalidToken(reason) => Refusal::audited(
                EventKind::AuthFailed,
                &workflow,
                reason.to_string(),
                ApiError::InvalidToken(reason),
            ),
            other => Refusal::not_audited(other),
        })?;
    // The admission event goes into the outbox with the trigger, so it is made (input
    // redacted, event sealed) before Redis decides.
    let stored_input = rules.audit_input.stored(&request.input);
    checks.audit = admission::admission_events(
        &state.audit,
        caller,
        &request,
        checks.due_ms.is_some(),
        stored_input.clone(),
    );
    let enqueued = match state.producer.enqueue(&request, &checks).await {
        Ok(enqueued) => enqueued,
        Err(e) => {
            if !crate::redis_conn::refused_before_running(&e) {
                admission::take_back_after_ambiguity(
                    state,
                    caller,
                    &request,
                    &checks,
                    stored_input,
                )
                .await;
            }
            return Err(Refusal::not_audited(ApiError::redis_unavailable(&e)));
        }
    };
    admission::decide(workflow, request, checks, stored_input, enqueued)
}

/// What of the body idempotency needs besides the input.
struct BodyAsk {
    due_ms: Option<u64>,
    fingerprint: String,
    /// The fingerprint versions before 2 stored (see `Trigger::legacy_fingerprint`).
    legacy_fingerprint: String,
}

/// Reads and checks the body (media type, size, shape, schema, timing) into the request
/// to queue.
async fn read_trigger(
    state: &AppState,
    caller: &Principal,
    workflow: &WorkflowName,
    rules: &Workflow,
    headers: &HeaderMap,
    deadline: Option<tokio::time::Instant>,
    body: Body,
) -> Result<(QueuedRequest, BodyAsk), ApiError> {
    if !is_json(headers) {
        return Err(ApiError::UnsupportedMediaType);
    }
    let body = read_limited(body, state.max_body_bytes, deadline).await?;
    let trigger = Trigger::parse(&body)?;
    let due_ms = trigger.due_ms(crate::clock::unix_ms())?;
    crate::policy::json_shape::check(&trigger.input)
        .map_err(|e| ApiError::InvalidBody(e.to_string()))?;
    rules.input.check(&trigger.input)?;
    let fingerprint = trigger.fingerprint(workflow);
    // Only a request with a key is compared with an earlier one.
    let legacy_fingerprint = if headers.contains_key("idempotency-key") {
        Trigger::legacy_fingerprint(workflow, &body)
    } else {
        String::new()
    };
    let request = QueuedRequest {
        request_id: RequestId::generate(workflow.clone()),
        input: trigger.input,
        owner: caller.owner(),
        client_id: caller.client_id.clone(),
        accepted_at: now_rfc3339(),
        http_request_id: crate::http::correlation::request_id(headers).map(str::to_owned),
        trace_header: crate::http::correlation::trace_header(headers).map(str::to_owned),
        traceparent: crate::telemetry::traceparent(&tracing::Span::current()),
    };
    Ok((
        request,
        BodyAsk {
            due_ms,
            fingerprint,
            legacy_fingerprint,
        },
    ))
}

/// The current state of the request an idempotent retry refers to. Its status is kept at
/// least as long as the idempotency record (a configuration rule); should someone have
/// deleted it, the retry gets what the first answer said.
async fn replayed_status(state: &AppState, request_id: &str) -> Result<RequestState, ApiError> {
    let Ok(id) = RequestId::parse(request_id) else {
        return Ok(RequestState::Queued);
    };
    let stored = super::requests::stored_status(state, &id).await?;
    Ok(stored.map_or(RequestState::Queued, |stored| {
        super::requests::visible_state(&stored, crate::clock::unix_ms())
    }))
}

/// The workflow, if `caller` may trigger it. Unknown and forbidden look the same to callers.
fn authorize_trigger<'r>(
    runtime: &'r Runtime,
    caller: &Principal,
    raw: &str,
) -> Result<(WorkflowName, &'r Workflow), Refusal> {
    let known = WorkflowName::parse(raw)
        .ok()
        .and_then(|name| runtime.workflows.get(&name).map(|w| (name, w)));
    let reason = match &known {
        Some((name, workflow)) => match authorize(caller, &workflow.policy) {
            Decision::Allowed { .. } => return Ok((name.clone(), *workflow)),
            Decision::Denied { reason } => reason,
        },
        None => "unknown workflow".to_owned(),
    };
    Err(Refusal::denied(
        known.as_ref().map(|(name, _)| name),
        raw,
        reason,
    ))
}

/// `application/json`, optionally with parameters; an absent Content-Type is accepted as JSON.
fn is_json(headers: &HeaderMap) -> bool {
    match headers.get(header::CONTENT_TYPE).map(|v| v.to_str()) {
        None => true,
        Some(Ok(value)) => {
            let media = value.split(';').next().unwrap_or_default().trim();
            media.eq_ignore_ascii_case("application/json")
        }
        Some(Err(_)) => false,
    }
}

/// Reads the body up to `limit` bytes, before `deadline` (the listener's request deadline).
async fn read_limited(
    body: Body,
    limit: usize,
    deadline: Option<tokio::time::Instant>,
) -> Result<axum::body::Bytes, ApiError> {
    let collect = Limited::new(body, limit).collect();
    let collected = match deadline {
        Some(deadline) => tokio::time::timeout_at(deadline, collect)
            .await
            .map_err(|_| ApiError::RequestTimeout)?,
        None => collect.await,
    };
    match collected {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(e) if e.downcast_ref::<LengthLimitError>().is_some() => {
            Err(ApiError::PayloadTooLarge { limit })
        }
        Err(e) => Err(ApiError::InvalidBody(format!(
            "could not read the request body: {e}"
        ))),
    }
}
