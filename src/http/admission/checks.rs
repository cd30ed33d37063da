//! What a workflow asks of a trigger besides its authorization: the Redis-side checks
//! (idempotency key, one-time token, rate limits, backlog bound), built from the
//! configuration and the verified caller. Pure: nothing here touches Redis or the trail.

use std::time::Duration;

use crate::audit::record::sha256_hex;
use crate::auth::{AuthError, Principal};
use crate::config::Rate;
use crate::config::Workflow;
use crate::domain::WorkflowName;
use crate::http::error::ApiError;
use crate::queue::{Admission, IdempotencyKey, Limit, LimitScope, OneTimeToken};
use crate::runtime::Runtime;

/// The longest `Idempotency-Key` accepted.
const MAX_IDEMPOTENCY_KEY: usize = 255;

/// What the caller asked, for idempotency: the workflow, its `Idempotency-Key`, what the
/// request means ([`crate::http::trigger_body::Trigger::fingerprint`]).
pub struct Ask<'a> {
    pub workflow: &'a WorkflowName,
    /// When the trigger is due (Unix ms), if deferred.
    pub due_ms: Option<u64>,
    pub idempotency_key: Option<&'a str>,
    pub fingerprint: String,
    pub legacy_fingerprint: String,
}

/// The `Idempotency-Key` header, if one (valid) was sent.
pub fn idempotency_key(headers: &axum::http::HeaderMap) -> Result<Option<&str>, ApiError> {
    let mut values = headers.get_all("idempotency-key").iter();
    let Some(value) = values.next() else {
        return Ok(None);
    };
    if values.next().is_some() {
        return Err(ApiError::InvalidIdempotencyKey(
            "send one Idempotency-Key header, not several".into(),
        ));
    }
    let valid = |k: &&str| {
        !k.is_empty() && k.len() <= MAX_IDEMPOTENCY_KEY && k.bytes().all(|b| b.is_ascii_graphic())
    };
    match value.to_str().ok().filter(valid) {
        Some(key) => Ok(Some(key)),
        None => Err(ApiError::InvalidIdempotencyKey(format!(
            "Idempotency-Key must be 1 to {MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        ))),
    }
}

/// The checks `workflow` asks of a trigger by `caller`; `Err` only for a one-time-token
/// workflow and a token without `jti`.
pub fn checks(
    runtime: &Runtime,
    workflow: &Workflow,
    caller: &Principal,
    ask: &Ask<'_>,
    idempotency_ttl: Duration,
) -> Result<Admission, ApiError> {
    let idempotency_key = ask.idempotency_key.map(|key| IdempotencyKey {
        // Digests: the caller's identity and key are caller-chosen text.
        id: sha256_hex(format!("{}\n{key}", caller.owner()).as_bytes()),
        fingerprint: ask.fingerprint.clone(),
        legacy_fingerprint: ask.legacy_fingerprint.clone(),
        ttl_seconds: idempotency_ttl.as_secs(),
    });
    let one_time_token = if workflow.one_time_tokens {
        Some(one_time_token(runtime, caller)?)
    } else {
        None
    };
    let limit = |name, scope, rate: Rate| Limit {
        name,
        scope,
        requests: rate.requests,
        period: rate.per,
    };
    let mut limits = Vec::new();
    if let Some(rate) = workflow.rate_limits.workflow {
        limits.push(limit("workflow", LimitScope::Workflow, rate));
    }
    // A digest: the identity is caller-chosen text and must not shape Redis keys.
    let digest = || caller.owner().digest();
    if let Some(rate) = workflow.rate_limits.per_caller {
        limits.push(limit("caller", LimitScope::Caller(digest()), rate));
    }
    if let Some(rate) = runtime.caller_limit {
        limits.push(limit(
            "caller-total",
            LimitScope::CallerTotal(digest()),
            rate,
        ));
    }
    Ok(Admission {
        due_ms: ask.due_ms,
        idempotency_key,
        one_time_token,
        limits,
        max_backlog: workflow.max_backlog,
        // Made once the request is: see `record::admission_events`.
        audit: Default::default(),
    })
}

/// Identifies a one-time token by its issuer and `jti` (hashed: both are caller-chosen text),
/// to be remembered as long as the token could still be presented.
fn one_time_token(runtime: &Runtime, caller: &Principal) -> Result<OneTimeToken, ApiError> {
    let jti = caller
        .claims
        .get("jti")
        .and_then(|v| v.as_str())
        .ok_or(ApiError::InvalidToken(AuthError::NoTokenId))?;
    // A NumericDate may have a fraction (RFC 7519 §2): rounded up. The verifier takes `now`
    // in whole seconds, so the token is accepted until up to a second past `exp` plus the
    // leeway; the marker outlives that by a second more. (The TTL runs on Redis' clock,
    // assumed to agree with this host's within that second.)
    let exp = caller
        .claims
        .get("exp")
        .and_then(|v| {
            v.as_u64().or_else(|| {
                v.as_f64()
                    .filter(|exp| exp.is_finite() && *exp >= 0.0)
                    .map(|exp| exp.ceil() as u64)
            })
        })
        .unwrap_or(0);
    let now = crate::clock::unix_seconds();
    Ok(OneTimeToken {
        id: sha256_hex(format!("{}\n{jti}", caller.issuer).as_bytes()),
        ttl_seconds: exp.saturating_sub(now) + runtime.verifier.leeway(&caller.issuer) + 1,
    })
}
