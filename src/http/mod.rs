//! The HTTP API: routes, errors, extractors and the OpenAPI document.

pub mod admission;
pub mod correlation;
pub mod error;
mod examples;
pub mod extract;
pub mod listener;
pub mod openapi;
pub mod query;
pub mod routes;
pub mod served_document;
pub mod trigger_body;

use std::any::Any;

use axum::Router;
use axum::response::{IntoResponse, Response};
use tower::ServiceBuilder;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::trace::TraceLayer;
use utoipa_swagger_ui::SwaggerUi;

use crate::state::AppState;
pub use axum::http::HeaderValue;
use error::ApiError;

/// The API listener's router: the API, `/openapi.json`, the Swagger UI at `/docs`, and,
/// unless `separate_ops` (they are on the operations listener then), `/readyz` and
/// `/metrics`.
pub fn router(state: AppState, separate_ops: bool) -> Router {
    let (api, document) = openapi::router_and_document(separate_ops);
    // The document is served by our own route (it adds the configured identity providers);
    // the UI only points at it.
    let document = std::sync::Arc::new(serde_json::to_value(&document).unwrap_or_default());
    let served = axum::routing::get(
        move |axum::extract::State(state): axum::extract::State<AppState>| {
            let document = std::sync::Arc::clone(&document);
            async move {
                axum::Json(served_document::with_identity_providers(
                    &document,
                    &state.runtime(),
                ))
            }
        },
    );
    let api = api
        .route("/openapi.json", served)
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::new(["/openapi.json"])));
    with_middleware(api).with_state(state)
}

/// The operations listener's router (`server.ops_listen`): `/healthz`, `/readyz` with the
/// state machines' circuits, `/metrics`.
pub fn ops_router(state: AppState) -> Router {
    let ops = openapi::ops_routes().layer(axum::Extension(routes::health::OperatorView));
    with_middleware(ops).with_state(state)
}

/// Wraps every route of `router` in the request middleware.
fn with_middleware(router: Router<AppState>) -> Router<AppState> {
    // ServiceBuilder applies top to bottom, outermost first: the request id is set before
    // the trace span opens (so the span can show it) and is copied to the response last;
    // panics become a problem response inside, where they are logged like any 500.
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(
            TraceLayer::new_for_http()
                .make_span_with(request_span)
                .on_response(record_response),
        )
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(error::log_errors))
        .layer(axum::middleware::from_fn(error::problem_for_routing_errors))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(axum::middleware::from_fn(correlation::scope_request_id))
        .layer(CatchPanicLayer::custom(panic_response));
    router.layer(middleware)
}

/// Counts each request by its route template (bounded: never the raw path), method, status
/// and, for triggers, the decision the status stands for; times it per route.
async fn record_metrics(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = crate::metrics::method_label(request.method());
    let started = std::time::Instant::now();
    let response = next.run(request).await;
    let status = response.status().as_u16();
    let decision = if route == TRIGGER_ROUTE {
        match status {
            202 => "accepted",
            401 => "auth_failed",
            403 => "denied",
            429 => "rate_limited",
            503 => "unavailable",
            400..=499 => "invalid",
            _ => "error",
        }
    } else {
        ""
    };
    let registry = crate::metrics::metrics();
    registry
        .http_requests
        .get_or_create(&crate::metrics::HttpLabels {
            route: route.clone(),
            method,
            status: status.to_string(),
            decision: decision.to_owned(),
        })
        .inc();
    registry
        .http_duration
        .get_or_create(&crate::metrics::RouteLabels { route })
        .observe(started.elapsed().as_secs_f64());
    response
}

/// The request's span: when spans are exported, named by its route (bounded) as OpenTelemetry
/// expects of a server span and joined to the caller's `traceparent`; otherwise at `DEBUG`,
/// free under the usual `info` filter.
fn request_span(request: &axum::extract::Request) -> tracing::Span {
    // Borrowed, and read by the span macros only when the span is enabled.
    let request_id = correlation::request_id(request.headers()).unwrap_or_default();
    if !crate::telemetry::exporting() {
        return tracing::debug_span!("request", method = %request.method(), uri = %request.uri(), request_id);
    }
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or("unmatched", |path| path.as_str());
    let span = tracing::info_span!(
        "request",
        // Bounded like the metric labels: a made-up method must not name new spans.
        otel.name = %format_args!("{} {route}", crate::metrics::method_label(request.method())),
        otel.kind = "server",
        otel.status_code = tracing::field::Empty,
        http.request.method = crate::metrics::method_label(request.method()),
        http.route = route,
        url.path = request.uri().path(),
        request_id,
        http.response.status_code = tracing::field::Empty,
    );
    crate::telemetry::join_caller_trace(&span, request.headers());
    span
}

fn record_response(response: &Response, latency: std::time::Duration, span: &tracing::Span) {
    let status = response.status();
    span.record("http.response.status_code", status.as_u16());
    if status.is_server_error() {
        span.record("otel.status_code", "ERROR");
    }
    tower_http::trace::OnResponse::on_response(
        tower_http::trace::DefaultOnResponse::default(),
        response,
        latency,
        span,
    );
}

const TRIGGER_ROUTE: &str = "/v1/workflows/{workflow}/executions";

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
