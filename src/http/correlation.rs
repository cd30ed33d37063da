//! Correlation ids a request brings or is given: `x-request-id` (set by the router when
//! absent) goes into every audit record about the request and into its queue entry, so the
//! `started` record carries it too; an X-Ray `X-Amzn-Trace-Id` goes to `StartExecution`, so
//! the execution joins the caller's trace. Both are caller-chosen text: only well-formed,
//! bounded values are kept.

use axum::extract::Request;
use axum::http::HeaderMap;
use axum::middleware::Next;
use axum::response::Response;

/// Longest `x-request-id` kept.
const MAX_REQUEST_ID: usize = 128;
/// Step Functions' limit on `traceHeader`.
const MAX_TRACE_HEADER: usize = 256;

/// The request's `x-request-id`, if it is 1 to 128 visible ASCII characters.
pub fn request_id(headers: &HeaderMap) -> Option<&str> {
    visible_ascii(headers, "x-request-id", MAX_REQUEST_ID)
}

/// The caller's X-Ray trace header, if well-formed enough to pass on.
pub fn trace_header(headers: &HeaderMap) -> Option<&str> {
    visible_ascii(headers, "x-amzn-trace-id", MAX_TRACE_HEADER)
}

fn visible_ascii<'h>(headers: &'h HeaderMap, name: &str, max: usize) -> Option<&'h str> {
    let value = headers.get(name)?.to_str().ok()?;
    (!value.is_empty() && value.len() <= max && value.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(value)
}

/// Runs the rest of the request with its request id in scope for audit events.
pub async fn scope_request_id(request: Request, next: Next) -> Response {
    let id = request_id(request.headers()).map(str::to_owned);
    crate::audit::record::in_http_request(id, next.run(request)).await
}
