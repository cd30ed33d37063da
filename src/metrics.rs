//! Prometheus metrics (OpenMetrics text at `GET /metrics`).
//!
//! Counters and histograms are per process, recorded where things happen; the queue gauges
//! (backlog, pending, deferred, dead letters) are read from Redis when scraped, so every
//! replica reports the shared truth, and the circuit states from this process's breakers.
//! Label values are bounded: routes are templates, workflows and state machines come from
//! the configuration, issuers from the configuration.

use std::sync::LazyLock;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct HttpLabels {
    /// The matched route template, or `unmatched`.
    pub route: String,
    /// One of [`method_label`]'s fixed values.
    pub method: &'static str,
    pub status: String,
    /// For triggers: accepted, auth_failed, denied, rate_limited, invalid, unavailable,
    /// error; empty for other routes.
    pub decision: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    pub route: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct SfnCallLabels {
    pub operation: &'static str,
    /// ok, already_exists, throttled, retryable, terminal.
    pub outcome: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OperationLabels {
    pub operation: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WorkflowLabels {
    pub workflow: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct CircuitLabels {
    pub state_machine: String,
    pub state: &'static str,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct JwksLabels {
    pub issuer: String,
    /// ok, error.
    pub outcome: &'static str,
}

pub struct Metrics {
    registry: Registry,
    pub http_requests: Family<HttpLabels, Counter>,
    pub http_duration: Family<RouteLabels, Histogram>,
    pub sfn_calls: Family<SfnCallLabels, Counter>,
    pub sfn_duration: Family<OperationLabels, Histogram>,
    pub executions_started: Family<WorkflowLabels, Counter>,
    pub jwks_fetches: Family<JwksLabels, Counter>,
    pub audit_append_duration: Histogram,
    pub audit_records: Counter,
    pub backlog: Family<WorkflowLabels, Gauge>,
    pub pending: Family<WorkflowLabels, Gauge>,
    pub deferred: Family<WorkflowLabels, Gauge>,
    pub dead_letters: Family<WorkflowLabels, Gauge>,
    pub circuit: Family<CircuitLabels, Gauge>,
    pub connections_open: Gauge,
    pub connections_refused: Counter,
}

/// A request method as a label: the standard ones by name, anything made up as `other`, so
/// clients cannot mint new series.
pub fn method_label(method: &axum::http::Method) -> &'static str {
    use axum::http::Method;
    match *method {
        Method::GET => "GET",
        Method::HEAD => "HEAD",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        Method::OPTIONS => "OPTIONS",
        _ => "other",
    }
}

/// Latency buckets from 0.1 ms to ~13 s.
fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.000_1, 2.5, 14))
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("stepgate");
        let http_requests = Family::<HttpLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route, method, status and (for triggers) decision",
            http_requests.clone(),
        );
        let http_duration =
            Family::<RouteLabels, Histogram>::new_with_constructor(latency_histogram as fn() -> _);
        registry.register(
            "http_request_duration_seconds",
            "Time to answer an HTTP request",
            http_duration.clone(),
        );
        let sfn_calls = Family::<SfnCallLabels, Counter>::default();
        registry.register(
            "sfn_calls",
            "Step Functions calls by operation and outcome class",
            sfn_calls.clone(),
        );
        let sfn_duration = Family::<OperationLabels, Histogram>::new_with_constructor(
            latency_histogram as fn() -> _,
        );
        registry.register(
            "sfn_call_duration_seconds",
            "Step Functions call latency",
            sfn_duration.clone(),
        );
        let executions_started = Family::<WorkflowLabels, Counter>::default();
        registry.register(
            "executions_started",
            "Executions this process started (rate() = drain rate)",
            executions_started.clone(),
        );
        let jwks_fetches = Family::<JwksLabels, Counter>::default();
        registry.register(
            "jwks_fetches",
            "Issuer key (discovery + JWKS) fetches by outcome",
            jwks_fetches.clone(),
        );
        let audit_append_duration = latency_histogram();
        registry.register(
            "audit_append_duration_seconds",
            "Time to append one batch of audit records to Redis",
            audit_append_duration.clone(),
        );
        let audit_records = Counter::default();
        registry.register(
            "audit_records",
            "Audit records this process appended",
            audit_records.clone(),
        );
        let gauge = |registry: &mut Registry, name: &str, help: &str| {
            let family = Family::<WorkflowLabels, Gauge>::default();
            registry.register(name, help, family.clone());
            family
        };
        let backlog = gauge(
            &mut registry,
            "queue_backlog",
            "Entries in the workflow's queue stream (waiting or in flight)",
        );
        let pending = gauge(
            &mut registry,
            "queue_pending",
            "Entries delivered to a consumer and not yet acknowledged",
        );
        let deferred = gauge(
            &mut registry,
            "queue_deferred",
            "Deferred triggers waiting for their time",
        );
        let dead_letters = gauge(
            &mut registry,
            "dead_letters",
            "Dead letters waiting for an operator",
        );
        let circuit = Family::<CircuitLabels, Gauge>::default();
        registry.register(
            "circuit_state",
            "1 for each state machine's current breaker state in this process",
            circuit.clone(),
        );
        let connections_open = Gauge::default();
        registry.register(
            "http_connections_open",
            "HTTP connections open on the API listener",
            connections_open.clone(),
        );
        let connections_refused = Counter::default();
        registry.register(
            "http_connections_refused",
            "Connections closed at once because server.max_connections were open",
            connections_refused.clone(),
        );
        Self {
            registry,
            http_requests,
            http_duration,
            sfn_calls,
            sfn_duration,
            executions_started,
            jwks_fetches,
            audit_append_duration,
            audit_records,
            backlog,
            pending,
            deferred,
            dead_letters,
            circuit,
            connections_open,
            connections_refused,
        }
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        if prometheus_client::encoding::text::encode(&mut text, &self.registry).is_err() {
            text.clear();
        }
        text
    }

    /// Records one Step Functions call.
    pub fn sfn_call(&self, operation: &'static str, outcome: &'static str, took: Duration) {
        self.sfn_calls
            .get_or_create(&SfnCallLabels { operation, outcome })
            .inc();
        self.sfn_duration
            .get_or_create(&OperationLabels { operation })
            .observe(took.as_secs_f64());
    }
}
