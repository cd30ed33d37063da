//! `GET /metrics`: Prometheus / OpenMetrics text.

use axum::extract::State;
use axum::http::header;
use axum::response::IntoResponse;

use crate::metrics::{CircuitLabels, WorkflowLabels, metrics};
use crate::state::AppState;
use crate::worker::breaker::CircuitState;

const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Metrics for Prometheus.
///
/// Requests by route, status and decision, latencies, Step Functions calls and latency by
/// outcome, executions started (the drain rate), JWKS fetches, audit append latency, and,
/// read from Redis at scrape time, each workflow's backlog, pending, deferred and dead
/// letters, and this process's circuit breaker states. Unauthenticated, like the probes:
/// expose it to the monitoring network only.
#[utoipa::path(get, path = "/metrics", operation_id = "get_metrics", tag = "health",
    responses((status = 200, description = "OpenMetrics text", body = String,
        content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8",
        example = json!("# HELP stepgate_http_requests HTTP requests by route, method, status and (for triggers) decision.\n# TYPE stepgate_http_requests counter\n\
stepgate_http_requests_total{route=\"/v1/workflows/{workflow}/executions\",method=\"POST\",status=\"202\",decision=\"accepted\"} 1042\n\
# HELP stepgate_queue_backlog Entries in the workflow's queue stream (waiting or in flight).\n# TYPE stepgate_queue_backlog gauge\n\
stepgate_queue_backlog{workflow=\"orders\"} 3\n# EOF\n"))))]
pub async fn get_metrics(State(state): State<AppState>) -> impl IntoResponse {
    let registry = metrics();
    let runtime = state.runtime();
    let mut redis = state.redis.clone();
    // Only the workflows and state machines of the configuration now (a reload may drop some).
    for family in [
        &registry.backlog,
        &registry.pending,
        &registry.deferred,
        &registry.dead_letters,
    ] {
        family.clear();
    }
    registry.circuit.clear();
    for workflow in runtime.workflows.keys() {
        let keys = &state.keys;
        let counts: redis::RedisResult<(u64, u64, u64)> = redis::pipe()
            .cmd("XLEN")
            .arg(keys.queue(workflow))
            .cmd("ZCARD")
            .arg(keys.deferred(workflow))
            .cmd("XLEN")
            .arg(keys.dead_letters(workflow))
            .query_async(&mut redis)
            .await;
        let pending: redis::RedisResult<redis::streams::StreamPendingReply> =
            redis::cmd("XPENDING")
                .arg(keys.queue(workflow))
                .arg(crate::queue::WORKERS_GROUP)
                .query_async(&mut redis)
                .await;
        let labels = WorkflowLabels {
            workflow: workflow.to_string(),
        };
        // Unknown while Redis does not answer: the series are left as they were.
        if let Ok((backlog, deferred, dead)) = counts {
            registry.backlog.get_or_create(&labels).set(backlog as i64);
            registry
                .deferred
                .get_or_create(&labels)
                .set(deferred as i64);
            registry
                .dead_letters
                .get_or_create(&labels)
                .set(dead as i64);
        }
        if let Ok(pending) = pending {
            registry
                .pending
                .get_or_create(&labels)
                .set(pending.count() as i64);
        }
    }
    for circuit in state.step_functions.breakers.statuses() {
        for (name, state) in [
            ("closed", CircuitState::Closed),
            ("open", CircuitState::Open),
            ("half_open", CircuitState::HalfOpen),
        ] {
            registry
                .circuit
                .get_or_create(&CircuitLabels {
                    state_machine: circuit.state_machine.clone(),
                    state: name,
                })
                .set(i64::from(circuit.state == state));
        }
    }
    ([(header::CONTENT_TYPE, OPENMETRICS)], registry.encode())
}
