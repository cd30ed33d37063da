//! Every API error, mapped to an RFC 9457 problem in one place.
//!
//! Bodies carry a stable `code`. Authentication errors reveal no more than RFC 6750's error
//! code (the precise reason goes to logs and the audit trail); 5xx bodies are opaque.
//! `into_response` has no side effects: it stashes the error's message in the response
//! extensions and [`log_errors`] logs it once.

use axum::Json;
use axum::extract::Request;
use axum::http::{HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use utoipa::ToSchema;

use crate::auth::AuthError;
use crate::policy::{InputError, InputViolation};

/// The realm in `WWW-Authenticate` challenges.
const REALM: &str = "stepgate";

/// An RFC 9457 problem details object.
#[derive(Debug, Serialize, ToSchema)]
#[schema(example = json!({
    "type": "urn:stepgate:problem:insufficient_scope",
    "title": "Forbidden",
    "status": 403,
    "detail": "the access token does not allow this request",
    "code": "insufficient_scope"
}))]
pub struct Problem {
    /// `urn:stepgate:problem:<code>`.
    #[serde(rename = "type")]
    pub problem_type: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable, machine-readable error code.
    pub code: String,
    /// For `invalid_input`: each place where the input fails the workflow's schema.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub errors: Option<Vec<InputViolation>>,
}

/// Everything a request can fail with.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("no bearer token")]
    MissingToken,
    #[error("malformed Authorization header: {0}")]
    MalformedAuthorization(&'static str),
    #[error("invalid token: {0}")]
    InvalidToken(AuthError),
    #[error("forbidden: {0}")]
    Forbidden(String),
    #[error("not found")]
    NotFound,
    #[error("method not allowed")]
    MethodNotAllowed,
    #[error("malformed request path")]
    MalformedPath,
    #[error("unsupported media type")]
    UnsupportedMediaType,
    #[error("request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("the input is larger than the workflow's {limit} bytes")]
    InputTooLarge { limit: usize },
    #[error("invalid Idempotency-Key: {0}")]
    InvalidIdempotencyKey(String),
    #[error("invalid request body: {0}")]
    InvalidBody(String),
    #[error("the request body did not arrive within the request timeout")]
    RequestTimeout,
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
    #[error("the input does not match the workflow's schema")]
    InvalidInput(Vec<InputViolation>),
    #[error("the Idempotency-Key was used with another request")]
    IdempotencyKeyReused,
    #[error("request {request_id} is not yet accepted for good")]
    RequestPending {
        request_id: String,
        retry_after_seconds: u64,
    },
    #[error("rate limit {policy} exhausted")]
    RateLimited {
        policy: &'static str,
        retry_after_seconds: u64,
        headers: RateLimitHeaders,
    },
    #[error("{what} is unavailable: {detail}")]
    Unavailable {
        what: &'static str,
        detail: String,
        retry_after_seconds: u64,
    },
    #[error("internal error: {0}")]
    Internal(String),
}

/// `RateLimit-Policy` and `RateLimit` (draft-ietf-httpapi-ratelimit-headers), as structured
/// field values: `"caller";q=100;w=60` and `"caller";r=0;t=12`.
#[derive(Debug, Clone, Default)]
pub struct RateLimitHeaders {
    pub policy: String,
    pub current: String,
}

impl RateLimitHeaders {
    pub fn apply(&self, headers: &mut axum::http::HeaderMap) {
        let pairs = [
            ("ratelimit-policy", &self.policy),
            ("ratelimit", &self.current),
        ];
        for (name, value) in pairs {
            if let Ok(value) = HeaderValue::from_str(value)
                && !value.is_empty()
            {
                headers.insert(name, value);
            }
        }
    }
}

/// The message of an error response, for [`log_errors`].
#[derive(Clone)]
struct LoggedError(String);

impl ApiError {
    /// Redis could not take or give the data: the caller should retry shortly.
    pub fn redis_unavailable(e: &redis::RedisError) -> Self {
        ApiError::Unavailable {
            what: "the queue",
            detail: e.to_string(),
            retry_after_seconds: 1,
        }
    }

    fn status(&self) -> StatusCode {
        match self {
            ApiError::MissingToken | ApiError::InvalidToken(_) => StatusCode::UNAUTHORIZED,
            ApiError::MalformedAuthorization(_)
            | ApiError::MalformedPath
            | ApiError::InvalidBody(_)
            | ApiError::InvalidIdempotencyKey(_)
            | ApiError::InvalidParameter(_) => StatusCode::BAD_REQUEST,
            ApiError::InvalidInput(_) | ApiError::IdempotencyKeyReused => {
                StatusCode::UNPROCESSABLE_ENTITY
            }
            ApiError::Forbidden(_) => StatusCode::FORBIDDEN,
            ApiError::NotFound => StatusCode::NOT_FOUND,
            ApiError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ApiError::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            ApiError::PayloadTooLarge { .. } | ApiError::InputTooLarge { .. } => {
                StatusCode::PAYLOAD_TOO_LARGE
            }
            ApiError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            ApiError::RequestPending { .. } => StatusCode::CONFLICT,
            ApiError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            ApiError::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ApiError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ApiError::MissingToken => "missing_token",
            ApiError::MalformedAuthorization(_) | ApiError::MalformedPath => "invalid_request",
            ApiError::InvalidToken(_) => "invalid_token",
            ApiError::Forbidden(_) => "insufficient_scope",
            ApiError::NotFound => "not_found",
            ApiError::MethodNotAllowed => "method_not_allowed",
            ApiError::UnsupportedMediaType => "unsupported_media_type",
            ApiError::PayloadTooLarge { .. } => "payload_too_large",
            ApiError::InputTooLarge { .. } => "input_too_large",
            ApiError::InvalidIdempotencyKey(_) => "invalid_idempotency_key",
            ApiError::InvalidBody(_) => "invalid_body",
            ApiError::RequestTimeout => "request_timeout",
            ApiError::InvalidParameter(_) => "invalid_parameter",
            ApiError::InvalidInput(_) => "invalid_input",
            ApiError::IdempotencyKeyReused => "idempotency_key_reused",
            ApiError::RequestPending { .. } => "request_pending",
            ApiError::RateLimited { .. } => "rate_limited",
            ApiError::Unavailable { .. } => "unavailable",
            ApiError::Internal(_) => "internal",
        }
    }

    /// What the caller is told; never more than it may know.
    fn detail(&self) -> String {
        match self {
            ApiError::MissingToken => "this request needs a bearer access token".into(),
            ApiError::MalformedAuthorization(why) => {
                format!("the Authorization header is malformed: {why}")
            }
            ApiError::InvalidToken(_) => "the access token is invalid".into(),
            ApiError::Forbidden(_) => "the access token does not allow this request".into(),
            ApiError::NotFound => "there is no such resource".into(),
            ApiError::MethodNotAllowed => {
                "this resource does not support the method; the Allow header lists those it does"
                    .into()
            }
            ApiError::MalformedPath => {
                "the request's path could not be read (invalid percent-encoding or characters)"
                    .into()
            }
            ApiError::UnsupportedMediaType => "the request body must be application/json".into(),
            ApiError::PayloadTooLarge { limit } => {
                format!(
                    "the request body is larger than the gateway accepts ({limit} bytes at most)"
                )
            }
            ApiError::InputTooLarge { limit } => format!(
                "the input is larger than this workflow accepts ({limit} bytes of JSON at most)"
            ),
            ApiError::InvalidBody(why)
            | ApiError::InvalidParameter(why)
            | ApiError::InvalidIdempotencyKey(why) => why.clone(),
            ApiError::RequestTimeout => {
                "the request body did not arrive in time; nothing was queued".into()
            }
            ApiError::IdempotencyKeyReused => {
                "this Idempotency-Key was used with another request (workflow or body)".into()
            }
            ApiError::RequestPending {
                request_id,
                retry_after_seconds,
            } => format!(
                "the first request with this Idempotency-Key ({request_id}) waits for its audit \
                 record and may still be withdrawn; retry after {retry_after_seconds} s for its \
                 outcome"
            ),
            ApiError::InvalidInput(violations) => {
                format!(
                    "the input does not match the workflow's schema ({} violation(s))",
                    violations.len()
                )
            }
            ApiError::RateLimited {
                retry_after_seconds,
                ..
            } => {
                format!("too many requests; retry after {retry_after_seconds} s")
            }
            ApiError::Unavailable { what, .. } => {
                format!("{what} is temporarily unavailable; retry later")
            }
            ApiError::Internal(_) => "an internal error occurred".into(),
        }
    }

    /// RFC 6750 §3 challenge for the authentication and authorization errors.
    fn challenge(&self) -> Option<String> {
        match self {
            // No error code when the request carried no credentials at all (RFC 6750 §3.1).
            ApiError::MissingToken => Some(format!("Bearer realm=\"{REALM}\"")),
            ApiError::MalformedAuthorization(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_request\""
            )),
            ApiError::InvalidToken(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"invalid_token\", error_description=\"the access token is invalid\""
            )),
            ApiError::Forbidden(_) => Some(format!(
                "Bearer realm=\"{REALM}\", error=\"insufficient_scope\""
            )),
            _ => None,
        }
    }
}

impl From<InputError> for ApiError {
    fn from(e: InputError) -> Self {
        match e {
            InputError::TooLarge { limit } => ApiError::InputTooLarge { limit },
            InputError::Invalid(violations) => ApiError::InvalidInput(violations),
        }
    }
}

impl From<AuthError> for ApiError {
    fn from(e: AuthError) -> Self {
        if e.is_unavailable() {
            ApiError::Unavailable {
                what: "token verification",
                detail: e.to_string(),
                retry_after_seconds: e.retry_after_seconds(),
            }
        } else {
            ApiError::InvalidToken(e)
        }
    }
}

impl ApiError {
    /// The body the caller gets (also the documentation's examples, [`super::examples`]).
    pub(crate) fn problem(&self) -> Problem {
        let status = self.status();
        let code = self.code();
        Problem {
            problem_type: format!("urn:stepgate:problem:{code}"),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            status: status.as_u16(),
            detail: self.detail(),
            code: code.to_owned(),
            errors: match self {
                ApiError::InvalidInput(violations) => Some(violations.clone()),
                _ => None,
            },
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let mut response = (self.status(), Json(self.problem())).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let Some(challenge) = self
            .challenge()
            .and_then(|c| HeaderValue::from_str(&c).ok())
        {
            headers.insert(header::WWW_AUTHENTICATE, challenge);
        }
        match &self {
            ApiError::Unavailable {
                retry_after_seconds,
                ..
            }
            | ApiError::RequestPending {
                retry_after_seconds,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
            }
            ApiError::RateLimited {
                retry_after_seconds,
                headers: rate,
                ..
            } => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_seconds));
                rate.apply(headers);
            }
            _ => {}
        }
        response
            .extensions_mut()
            .insert(LoggedError(self.to_string()));
        response
    }
}

/// The router answers an unknown path (404) and a method a path lacks (405) with an empty
/// body, and a path it cannot decode (400) in plain text; every error of the API is
/// problem+json, so those get one here (405 keeps `Allow`).
pub async fn problem_for_routing_errors(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    let is_problem = response
        .headers()
        .get(header::CONTENT_TYPE)
        .is_some_and(|t| t.as_bytes().starts_with(b"application/problem+json"));
    if is_problem {
        return response;
    }
    let error = match response.status() {
        StatusCode::NOT_FOUND => ApiError::NotFound,
        StatusCode::METHOD_NOT_ALLOWED => ApiError::MethodNotAllowed,
        StatusCode::BAD_REQUEST => ApiError::MalformedPath,
        _ => return response,
    };
    let allow = response.headers().get(header::ALLOW).cloned();
    let mut answer = error.into_response();
    if let Some(allow) = allow {
        answer.headers_mut().insert(header::ALLOW, allow);
    }
    answer
}

/// Logs each error response once, at the edge.
pub async fn log_errors(request: Request, next: Next) -> Response {
    let method = request.method().clone();
    let path = request.uri().path().to_owned();
    let response = next.run(request).await;
    if let Some(LoggedError(message)) = response.extensions().get::<LoggedError>() {
        let status = response.status().as_u16();
        if response.status().is_server_error() {
            tracing::error!(http.method = %method, http.path = %path, http.status = status, error = %message, "request failed");
        } else {
            tracing::info!(http.method = %method, http.path = %path, http.status = status, error = %message, "request refused");
        }
    }
    response
}
