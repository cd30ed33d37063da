//! Extractors: the authenticated caller.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::{ConnectInfo, FromRequestParts};
use axum::http::HeaderValue;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;

use super::error::ApiError;
use crate::audit::AuditEvent;
use crate::auth::verifier::token_sha256;
use crate::auth::{Principal, unverified};
use crate::runtime::Runtime;
use crate::state::AppState;

/// How much of an unverified `iss` an audit record keeps.
const MAX_UNVERIFIED_ISSUER: usize = 256;

/// The verified caller of a request, and the configuration it was verified under (the
/// handler evaluates the policy of that same configuration, even if a reload happens
/// meanwhile). Handlers take this and never read headers themselves.
pub struct Caller(pub Arc<Principal>, pub Arc<Runtime>);

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let token = match bearer_token(parts.headers.get_all(AUTHORIZATION).iter()) {
            Ok(token) => token,
            Err(e) => {
                audit_refusal(state, parts, None, &e.to_string()).await;
                return Err(e);
            }
        };
        let runtime = state.runtime();
        match runtime.verifier.verify(token).await {
            Ok(principal) => Ok(Caller(principal, runtime)),
            Err(e) => {
                tracing::info!(token.sha256 = %token_sha256(token), reason = %e, "access token refused");
                audit_refusal(state, parts, Some(token), &e.to_string()).await;
                Err(e.into())
            }
        }
    }
}

/// The token of the one `Authorization: Bearer` header among `values` (RFC 6750 §2.1; the
/// scheme name is case-insensitive). Two `Authorization` headers are a malformed request;
/// another scheme, or none, carries no bearer credentials.
pub fn bearer_token<'a>(
    mut values: impl Iterator<Item = &'a HeaderValue>,
) -> Result<&'a str, ApiError> {
    let value = values.next().ok_or(ApiError::MissingToken)?;
    if values.next().is_some() {
        return Err(ApiError::MalformedAuthorization(
            "more than one Authorization header",
        ));
    }
    let value = value
        .to_str()
        .map_err(|_| ApiError::MalformedAuthorization("not ASCII"))?;
    let (scheme, token) = value.split_once(' ').ok_or(ApiError::MissingToken)?;
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Err(ApiError::MissingToken);
    }
    let token = token.trim_start_matches(' ');
    // RFC 6750 b64token: ALPHA / DIGIT / "-" / "." / "_" / "~" / "+" / "/", then "=" padding.
    let b64token = !token.is_empty()
        && token
            .trim_end_matches('=')
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b));
    if !b64token {
        return Err(ApiError::InvalidToken(crate::auth::AuthError::Malformed));
    }
    Ok(token)
}

async fn audit_refusal(state: &AppState, parts: &Parts, token: Option<&str>, reason: &str) {
    let client_addr = parts
        .extensions
        .get::<ConnectInfo<SocketAddr>>()
        .map(|ConnectInfo(addr)| addr.ip());
    // Attacker-controlled: kept only as a bounded hint of who the token claims to be from.
    let claimed_issuer = token
        .and_then(unverified::issuer)
        .map(|iss| iss.chars().take(MAX_UNVERIFIED_ISSUER).collect());
    let mut event =
        AuditEvent::token_refused(reason, token.map(token_sha256), claimed_issuer, client_addr);
    // Only a configured workflow: a made-up name would tell nothing and, as a source of
    // refusals, let a client mint one record per request (see audit::refusals).
    let runtime = state.runtime();
    event.workflow = parts
        .uri
        .path()
        .strip_prefix("/v1/workflows/")
        .and_then(|rest| rest.split('/').next())
        .and_then(|name| crate::domain::WorkflowName::parse(name).ok())
        .filter(|name| runtime.workflows.contains_key(name))
        .map(|name| name.to_string());
    state.audit.record(event).await;
}
