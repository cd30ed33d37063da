//! Liveness and readiness probes.

use std::collections::BTreeMap;
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::state::AppState;
use crate::worker::breaker::CircuitStatus;

/// Marks a request that came through the operations listener (`server.ops_listen`): only
/// there does readiness name the state machines.
#[derive(Debug, Clone, Copy)]
pub struct OperatorView;

/// Bound on the readiness check's Redis round trip.
const REDIS_PING_TIMEOUT: Duration = Duration::from_secs(1);

/// A probe's answer.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({"status": "ready", "checks": {"redis": "ok", "issuer http://127.0.0.1:4444": "ok"},
    "circuits": [{"state_machine": "orders", "state": "closed", "consecutive_failures": 0}]}))]
pub struct Health {
    /// `ok`, `ready` or `not_ready`.
    pub status: String,
    /// Each dependency: `ok`, or what is wrong.
    #[serde(skip_serializing_if = "BTreeMap::is_empty")]
    pub checks: BTreeMap<String, String>,
    /// The drain's circuit breaker per state machine, by name; only on the operations
    /// listener (an open one does not make the gateway unready: triggers are still accepted
    /// and wait in Redis).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub circuits: Vec<CircuitStatus>,
}

/// `ok` when Redis never evicts stepgate's keys, else what to change.
async fn eviction_check(redis: &mut crate::redis_conn::RedisConnection) -> String {
    let policies = tokio::time::timeout(
        REDIS_PING_TIMEOUT,
        crate::redis_eviction::evicting_policies(redis),
    )
    .await;
    match policies {
        Ok(Ok(policies)) if policies.is_empty() => "ok".to_owned(),
        Ok(Ok(policies)) => crate::redis_eviction::warning(&policies),
        Ok(Err(e)) => format!("unknown: cannot read maxmemory-policy ({})", e.category()),
        Err(_) => "unknown: timed out".to_owned(),
    }
}

/// Liveness: the process is up.
#[utoipa::path(get, path = "/healthz", operation_id = "get_health", tag = "health",
    responses((status = 200, description = "Alive", body = Health, example = json!({"status": "ok"}))))]
pub async fn get_health() -> Json<Health> {
    Json(Health {
        status: "ok".into(),
        checks: BTreeMap::new(),
        circuits: Vec::new(),
    })
}

/// Readiness: Redis answers and every issuer's signing keys are loaded.
#[utoipa::path(get, path = "/readyz", operation_id = "get_readiness", tag = "health",
    responses(
        (status = 200, description = "Ready to take traffic", body = Health),
        (status = 503, description = "A dependency is not ready", body = Health,
            headers(("Retry-After" = u64, description = "Seconds to wait")),
            example = json!({"status": "not_ready", "checks": {"redis": "unreachable: timed out",
                "issuer http://127.0.0.1:4444": "ok"}})),
    ))]
pub async fn get_readiness(
    State(state): State<AppState>,
    operator: Option<axum::Extension<OperatorView>>,
) -> Response {
    let mut checks = BTreeMap::new();
    let mut redis = state.redis.clone();
    let ping = tokio::time::timeout(
        REDIS_PING_TIMEOUT,
        redis::cmd("PING").query_async::<String>(&mut redis),
    )
    .await;
    let redis_check = match ping {
        Ok(Ok(_)) => "ok".to_owned(),
        Ok(Err(e)) => format!("unreachable: {}", e.category()),
        Err(_) => "unreachable: timed out".to_owned(),
    };
    let redis_answers = redis_check == "ok";
    checks.insert("redis".to_owned(), redis_check);
    for issuer in state.runtime().verifier.issuers() {
        let status = if issuer.keys.is_loaded() {
            "ok"
        } else {
            "signing keys not loaded"
        };
        checks.insert(
            format!("issuer {}", issuer.config.issuer),
            status.to_owned(),
        );
    }
    let credentials_problem = state
        .step_functions
        .credentials_problem
        .read()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    if !state.is_admitting() {
        checks.insert("admission".to_owned(), "shutting down".to_owned());
    }
    let backlog = &state.export_backlog;
    if backlog.over_cap() {
        checks.insert(
            "audit_export".to_owned(),
            format!(
                "{} records not exported (cap {}): triggers are refused",
                backlog.records(),
                backlog.cap()
            ),
        );
    }
    let ready = checks.values().all(|c| c == "ok");
    // Reported, but not a reason to stop admitting: triggers wait in Redis until the drain
    // (of any replica) can start them. The SDK's words (which may name roles and accounts)
    // only on the operations listener.
    let credentials = match (credentials_problem, operator.is_some()) {
        (None, _) => "ok".to_owned(),
        (Some(problem), true) => problem,
        (Some(_), false) => "unavailable".to_owned(),
    };
    checks.insert("aws_credentials".to_owned(), credentials);
    if redis_answers {
        // Reported, not a reason to stop: an operator's setting to fix (logged at start-up).
        checks.insert(
            "redis_eviction".to_owned(),
            eviction_check(&mut redis).await,
        );
    }
    let body = Json(Health {
        status: if ready { "ready" } else { "not_ready" }.into(),
        checks,
        circuits: if operator.is_some() {
            state.step_functions.breakers.statuses()
        } else {
            Vec::new()
        },
    });
    if ready {
        (StatusCode::OK, body).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            [(header::RETRY_AFTER, "5")],
            body,
        )
            .into_response()
    }
}
