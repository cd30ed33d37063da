//! The HTTP API: routes, errors, extractors and the OpenAPI document.

pub mod admission;
pub mod error;
pub mod extract;
pub mod openapi;
pub mod routes;

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
    let (api, document) = openapi::api_router().split_for_parts();
    // ServiceBuilder applies top to bottom, outermost first: the request id is set before
    // the trace span opens (so the span can show it) and is copied to the response last;
    // panics become a problem response inside, where they are logged like any 500.
    let middleware = ServiceBuilder::new()
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(TraceLayer::new_for_http())
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(axum::middleware::from_fn(error::log_errors))
        .layer(CatchPanicLayer::custom(panic_response));
    api.merge(SwaggerUi::new("/docs").url("/openapi.json", document))
        .layer(middleware)
        .with_state(state)
}

fn panic_response(_: Box<dyn Any + Send + 'static>) -> Response {
    ApiError::Internal("a handler panicked".into()).into_response()
}
