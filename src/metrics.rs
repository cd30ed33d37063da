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
    pub possible_duplicates: Family<WorkflowLabels, Counter>,
    pub jwks_fetches: Family<JwksLabels, Counter>,
    pub audit_append_duration: Histogram,
    pub audit_records: Counter,
    pub audit_outbox_rejected: Counter,
    pub audit_unexported: Gauge,
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

/// A metric's name (after the `stepgate_` prefix) and help text.
type Named = (&'static str, &'static str);

/// `stepgate_http_requests`
const HTTP_REQUESTS: Named = (
    "http_requests",
    "HTTP requests by route, method, status and (for triggers) decision",
);
/// `stepgate_http_request_duration_seconds`
const HTTP_DURATION: Named = (
    "http_request_duration_seconds",
    "Time to answer an HTTP request",
);
/// `stepgate_sfn_calls`
const SFN_CALLS: Named = (
    "sfn_calls",
    "Step Functions calls by operation and outcome class",
);
/// `stepgate_sfn_call_duration_seconds`
const SFN_DURATION: Named = ("sfn_call_duration_seconds", "Step Functions call latency");
/// `stepgate_executions_started`
const EXECUTIONS_STARTED: Named = (
    "executions_started",
    "Executions this process started (rate() = drain rate)",
);
/// `stepgate_possible_duplicate_starts`
const POSSIBLE_DUPLICATES: Named = (
    "possible_duplicate_starts",
    "Starts of EXPRESS executions retried after an unknown outcome (delivery = at_least_once): \
     each may have started a second execution",
);
/// `stepgate_jwks_fetches`
const JWKS_FETCHES: Named = (
    "jwks_fetches",
    "Issuer key (discovery + JWKS) fetches by outcome",
);
/// `stepgate_audit_append_duration_seconds`
const AUDIT_APPEND_DURATION: Named = (
    "audit_append_duration_seconds",
    "Time to append one batch of audit records to Redis",
);
/// `stepgate_audit_records`
const AUDIT_RECORDS: Named = ("audit_records", "Audit records this process appended");
/// `stepgate_audit_outbox_rejected`
const AUDIT_OUTBOX_REJECTED: Named = (
    "audit_outbox_rejected",
    "Audit outbox entries skipped: their seal did not hold (written without the signing key), or a sealed event sat in another workflow's outbox",
);
/// `stepgate_audit_unexported_records`
const AUDIT_UNEXPORTED: Named = (
    "audit_unexported_records",
    "Audit records in Redis not yet exported to the files (triggers are refused at audit.files.max_unexported_records)",
);

/// `stepgate_queue_backlog`
const BACKLOG: Named = (
    "queue_backlog",
    "Entries in the workflow's queue stream (waiting or in flight)",
);
/// `stepgate_queue_pending`
const PENDING: Named = (
    "queue_pending",
    "Entries delivered to a consumer and not yet acknowledged",
);
/// `stepgate_queue_deferred`
const DEFERRED: Named = ("queue_deferred", "Deferred triggers waiting for their time");
/// `stepgate_dead_letters`
const DEAD_LETTERS: Named = ("dead_letters", "Dead letters waiting for an operator");
/// `stepgate_circuit_state`
const CIRCUIT: Named = (
    "circuit_state",
    "1 for each state machine's current breaker state in this process",
);
/// `stepgate_http_connections_open`
const CONNECTIONS_OPEN: Named = (
    "http_connections_open",
    "HTTP connections open on the API listener",
);
/// `stepgate_http_connections_refused`
const CONNECTIONS_REFUSED: Named = (
    "http_connections_refused",
    "Connections closed at once because server.max_connections were open",
);

/// Latency histograms, one per label set.
fn latency_family<S: Clone + std::hash::Hash + Eq>() -> Family<S, Histogram> {
    Family::new_with_constructor(latency_histogram as fn() -> Histogram)
}

/// `metric`, once registered under its name, with its help.
fn registered<M>(registry: &mut Registry, (name, help): Named, metric: M) -> M
where
    M: prometheus_client::registry::Metric + Clone,
{
    registry.register(name, help, metric.clone());
    metric
}

static METRICS: LazyLock<Metrics> = LazyLock::new(Metrics::new);

/// This process's metrics.
pub fn metrics() -> &'static Metrics {
    &METRICS
}

impl Metrics {
    fn new() -> Self {
        let mut registry = Registry::with_prefix("stepgate");
        let r = &mut registry;
        let per_workflow = Family::<WorkflowLabels, Gauge>::default;
        Self {
            http_requests: registered(r, HTTP_REQUESTS, Family::default()),
            http_duration: registered(r, HTTP_DURATION, latency_family()),
            sfn_calls: registered(r, SFN_CALLS, Family::default()),
            sfn_duration: registered(r, SFN_DURATION, latency_family()),
            executions_started: registered(r, EXECUTIONS_STARTED, Family::default()),
            possible_duplicates: registered(r, POSSIBLE_DUPLICATES, Family::default()),
            jwks_fetches: registered(r, JWKS_FETCHES, Family::default()),
            audit_append_duration: registered(r, AUDIT_APPEND_DURATION, latency_histogram()),
            audit_records: registered(r, AUDIT_RECORDS, Counter::default()),
            audit_outbox_rejected: registered(r, AUDIT_OUTBOX_REJECTED, Counter::default()),
            audit_unexported: registered(r, AUDIT_UNEXPORTED, Gauge::default()),
            backlog: registered(r, BACKLOG, per_workflow()),
            pending: registered(r, PENDING, per_workflow()),
            deferred: registered(r, DEFERRED, per_workflow()),
            dead_letters: registered(r, DEAD_LETTERS, per_workflow()),
            circuit: registered(r, CIRCUIT, Family::default()),
            connections_open: registered(r, CONNECTIONS_OPEN, Gauge::default()),
            connections_refused: registered(r, CONNECTIONS_REFUSED, Counter::default()),
            registry,
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
