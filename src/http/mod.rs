//! The HTTP API: routes, errors, extractors and the OpenAPI document.

pub mod admission;
pub mod correlation;
pub mod error;
mod examples;
pub mod extract;
pub mod openapi;
pub mod routes;
pub mod served_document;

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

/// The whole application router: the API, `/openapi.json` and the Swagger UI at `/docs`.
pub fn router(state: AppState) -> Router {
    let (api, document) = openapi::router_and_document();
    // ServiceBuilder applies top to bottom, outermost first: the request id is set before
    // the trace span opens (so the span can show it) and is copied to the response last;
    // panics become a problem response inside, where they are logged like any 500.
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(error::log_errors))
        .layer(axum::middleware::from_fn(record_metrics))
        .layer(axum::middleware::from_fn(correlation::scope_request_id))
        .layer(CatchPanicLayer::custom(panic_response));
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
    api.route("/openapi.json", served)
        .merge(SwaggerUi::new("/docs").config(utoipa_swagger_ui::Config::new(["/openapi.json"])))
        .layer(middleware)
        .with_state(state)
}

/// Counts each request by its route template (bounded: never the raw path), method, status
/// and, for triggers, the decision the status stands for; times it per route.
async fn record_metrics(request: axum::extract::Request, next: axum::middleware::Next) -> Response {
    let route = request
        .extensions()
        .get::<axum::extract::MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |path| path.as_str().to_owned());
    let method = request.method().as_str().to_owned();
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

const TRIGGER_ROUTE: &str = "/v1/workflows/{workflow}/executions";

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
