//! `GET /v1/workflows`: what the caller may trigger.

use axum::Json;
use axum::extract::State;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use crate::config::DeliveryGuarantee;
use crate::http::error::{ApiError, Problem};
use crate::http::extract::Caller;
use crate::policy::{Decision, authorize};
use crate::state::AppState;

/// The workflows a caller may trigger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({"workflows": [{
    "name": "orders",
    "trigger_url": "/v1/workflows/orders/executions",
    "input_schema": {"type": "object", "required": ["order_id"]},
    "max_input_bytes": 65536,
    "delivery": "exactly_once"
}]}))]
pub struct WorkflowList {
    pub workflows: Vec<WorkflowSummary>,
}

/// One workflow the caller may trigger.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
#[schema(example = json!({
    "name": "orders",
    "trigger_url": "/v1/workflows/orders/executions",
    "input_schema": {"type": "object", "required": ["order_id"]},
    "max_input_bytes": 65536,
    "delivery": "exactly_once"
}))]
pub struct WorkflowSummary {
    pub name: String,
    /// Where to `POST` a trigger.
    pub trigger_url: String,
    /// The JSON Schema (2020-12) the input must satisfy, if the workflow has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(value_type = Option<Object>)]
    pub input_schema: Option<Value>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub max_input_bytes: Option<usize>,
    /// How often a trigger starts its execution: `exactly_once` (a STANDARD state machine),
    /// or what an EXPRESS one's configuration accepts, `at_least_once` (duplicates possible)
    /// or `at_most_once` (a start of unknown outcome ends `failed`). Absent while the state
    /// machine's type is not known yet, or when it is EXPRESS and no guarantee is accepted.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub delivery: Option<DeliveryGuarantee>,
}

/// List the workflows the caller may trigger.
///
/// Only workflows whose policy allows this caller are listed; the others are not revealed.
#[utoipa::path(
    get,
    path = "/v1/workflows",
    operation_id = "list_workflows",
    tag = "executions",
    responses(
        (status = 200, description = "The workflows this caller may trigger", body = WorkflowList),
        (status = 401, description = "Missing or invalid access token", body = Problem, content_type = "application/problem+json",
            headers(("WWW-Authenticate" = String, description = "RFC 6750 challenge"))),
        (status = 503, description = "The identity provider's keys are unavailable", body = Problem,
            content_type = "application/problem+json", headers(("Retry-After" = u64, description = "Seconds to wait"))),
    ),
    security(("bearer" = []))
)]
pub async fn list_workflows(
    State(state): State<AppState>,
    Caller(caller, runtime): Caller,
) -> Result<Json<WorkflowList>, ApiError> {
    let guarantees = &state.step_functions.guarantees;
    let mut workflows: Vec<WorkflowSummary> = runtime
        .workflows
        .iter()
        .filter(|(_, workflow)| {
            matches!(
                authorize(&caller, &workflow.policy),
                Decision::Allowed { .. }
            )
        })
        .map(|(name, workflow)| WorkflowSummary {
            name: name.to_string(),
            trigger_url: format!("/v1/workflows/{name}/executions"),
            input_schema: workflow.input.schema_document.clone(),
            max_input_bytes: workflow.input.max_bytes,
            delivery: guarantees.of(workflow).and_then(Result::ok),
        })
        .collect();
    workflows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(Json(WorkflowList { workflows }))
}
