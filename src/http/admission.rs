//! Admission of an authorized trigger: the Redis-side checks (one-time token, rate limits,
//! backlog bound) a workflow asks for, and what their outcome means for the caller.

use std::time::Duration;

use crate::audit::record::sha256_hex;
use crate::audit::{AuditEvent, EventKind};
use crate::auth::{AuthError, Principal};
use crate::config::Rate;
use crate::domain::WorkflowName;
use crate::http::error::{ApiError, RateLimitHeaders};
use crate::queue::{Admission, Enqueued, IdempotencyKey, Limit, LimitScope, OneTimeToken, Quota};
use crate::runtime::Runtime;
use crate::state::{AppState, Workflow};

/// Seconds a caller is told to wait when the backlog is full.
const BACKLOG_RETRY_SECONDS: u64 = 5;

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
}

/// How an admitted trigger is answered.
pub enum Admitted {
    /// Newly queued (or, `deferred`, held until due; or, `held`, held until its audit
    /// record is written); the quota headers of its rate limits.
    New {
        quota: RateLimitHeaders,
        deferred: bool,
        held: bool,
    },
    /// A retry with the same idempotency key and body: the request it queued before.
    Duplicate(String),
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

/// The checks `workflow` asks of a trigger by `caller`.
pub fn admission(
    runtime: &Runtime,
    workflow: &Workflow,
    caller: &Principal,
    ask: &Ask<'_>,
    idempotency_ttl_seconds: u64,
) -> Result<Admission, ApiError> {
    let idempotency_key = ask.idempotency_key.map(|key| IdempotencyKey {
        // Digests: the caller's identity and key are caller-chosen text.
        id: sha256_hex(format!("{}\n{key}", caller.owner()).as_bytes()),
        fingerprint: ask.fingerprint.clone(),
        ttl_seconds: idempotency_ttl_seconds,
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
        period: Duration::from_secs(rate.per_seconds),
    };
    let mut limits = Vec::new();
    if let Some(rate) = workflow.rate_limits.workflow {
        limits.push(limit("workflow", LimitScope::Workflow, rate));
    }
    // A digest: the identity is caller-chosen text and must not shape Redis keys.
    let digest = || sha256_hex(caller.owner().as_bytes())[..32].to_owned();
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
    })
}

/// How an admitted trigger is answered, or the error of a refused one (audited).
pub async fn outcome(
    state: &AppState,
    caller: &Principal,
    workflow: &WorkflowName,
    admission: &Admission,
    enqueued: Enqueued,
) -> Result<Admitted, ApiError> {
    match enqueued {
        Enqueued::Queued { quotas, entry_id } => Ok(Admitted::New {
            quota: quota_headers(&admission.limits, &quotas),
            deferred: entry_id == "deferred",
            held: entry_id == "held",
        }),
        Enqueued::Duplicate { request_id } => Ok(Admitted::Duplicate(request_id)),
        Enqueued::KeyReused => Err(ApiError::IdempotencyKeyReused),
        Enqueued::Replayed => {
            audit(
                state,
                caller,
                workflow,
                EventKind::AuthFailed,
                &AuthError::Replayed.to_string(),
            )
            .await;
            Err(ApiError::InvalidToken(AuthError::Replayed))
        }
        Enqueued::Backlogged => {
            let backlog = admission.max_backlog.unwrap_or_default();
            audit(
                state,
                caller,
                workflow,
                EventKind::RateLimited,
                &format!("the backlog of {backlog} entries is full"),
            )
            .await;
            Err(ApiError::Unavailable {
                what: "the workflow's queue",
                detail: format!("the backlog of {backlog} entries is full"),
                retry_after_seconds: BACKLOG_RETRY_SECONDS,
            })
        }
        Enqueued::Limited { index, retry_after } => {
            let Some(limit) = admission.limits.get(index) else {
                return Err(ApiError::Internal(
                    "the admission script named an unknown limit".into(),
                ));
            };
            let retry_after_seconds = retry_after.as_millis().div_ceil(1_000).max(1) as u64;
            audit(
                state,
                caller,
                workflow,
                EventKind::RateLimited,
                &format!("rate limit {} exhausted", limit.name),
            )
            .await;
            let headers = RateLimitHeaders {
                policy: policy_header(&admission.limits),
                current: format!("\"{}\";r=0;t={retry_after_seconds}", limit.name),
            };
            Err(ApiError::RateLimited {
                policy: limit.name,
                retry_after_seconds,
                headers,
            })
        }
    }
}

/// Refusals of the token itself on this workflow are audited as authentication failures.
pub async fn audit_refused_token(
    state: &AppState,
    caller: &Principal,
    workflow: &WorkflowName,
    error: &ApiError,
) {
    if let ApiError::InvalidToken(reason) = error {
        audit(
            state,
            caller,
            workflow,
            EventKind::AuthFailed,
            &reason.to_string(),
        )
        .await;
    }
}

/// An audit event about `caller`'s request to `workflow` (if known).
pub fn caller_event(
    kind: EventKind,
    caller: &Principal,
    workflow: Option<&WorkflowName>,
) -> AuditEvent {
    let mut event = AuditEvent::now(kind);
    event.workflow = workflow.map(ToString::to_string);
    event.issuer = Some(caller.issuer.clone());
    event.subject = Some(caller.subject.clone());
    event.client_id.clone_from(&caller.client_id);
    event.token_sha256 = Some(caller.token_sha256.clone());
    event
}

/// Longest name kept of what a refused caller asked for (`requested` in the trail).
const MAX_REQUESTED: usize = 64;

/// The workflow name a caller asked for, as the trail keeps it: at most 64 characters. It is
/// recorded whether or not such a workflow exists; the caller's answer does not say.
pub fn requested_name(raw: &str) -> String {
    match raw.char_indices().nth(MAX_REQUESTED) {
        Some((end, _)) => format!("{}…", &raw[..end]),
        None => raw.to_owned(),
    }
}

async fn audit(
    state: &AppState,
    caller: &Principal,
    workflow: &WorkflowName,
    kind: EventKind,
    reason: &str,
) {
    let mut event = caller_event(kind, caller, Some(workflow));
    event.reason = Some(reason.to_owned());
    state.audit.record(event).await;
}

fn policy_header(limits: &[Limit]) -> String {
    let policies: Vec<String> = limits
        .iter()
        .map(|l| format!("\"{}\";q={};w={}", l.name, l.requests, l.period.as_secs()))
        .collect();
    policies.join(", ")
}

/// The headers of the limit with the fewest requests left.
fn quota_headers(limits: &[Limit], quotas: &[Quota]) -> RateLimitHeaders {
    let tightest = limits
        .iter()
        .zip(quotas)
        .min_by_key(|(_, quota)| quota.remaining);
    RateLimitHeaders {
        policy: policy_header(limits),
        current: tightest.map_or_else(String::new, |(limit, quota)| {
            format!(
                "\"{}\";r={};t={}",
                limit.name,
                quota.remaining,
                quota.reset.as_millis().div_ceil(1_000)
            )
        }),
    }
}

/// Identifies a one-time token by its issuer and `jti` (hashed: both are caller-chosen text),
/// to be remembered as long as the token could still be presented.
fn one_time_token(runtime: &Runtime, caller: &Principal) -> Result<OneTimeToken, ApiError> {
    let jti = caller
        .claims
        .get("jti")
        .and_then(|v| v.as_str())
        .ok_or(ApiError::InvalidToken(AuthError::NoTokenId))?;
    let exp = caller
        .claims
        .get("exp")
        .and_then(|v| v.as_u64())
        .unwrap_or(0);
    let now = crate::clock::unix_seconds();
    Ok(OneTimeToken {
        id: sha256_hex(format!("{}\n{jti}", caller.issuer).as_bytes()),
        ttl_seconds: exp.saturating_sub(now) + runtime.verifier.leeway(&caller.issuer),
    })
}
