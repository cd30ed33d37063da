//! Opaque tokens: which issuer may see one, and what its introspection said.
//!
//! A token that is not a JWS goes to exactly one issuer: the one introspecting issuer, or,
//! when several introspect, the one whose `opaque_token_prefix` it starts with. It is never
//! shown to another (that would hand issuer A's token, with stepgate's client secret, to
//! issuer B), and a token no issuer claims is refused without any call.
//!
//! Verdicts are kept by the token's SHA-256: "active" until the token's `exp`, "not active"
//! (or a refused answer) for `introspection_negative_cache_seconds`, "could not ask" for a
//! second. Concurrent requests
//! with the same token wait for one introspection (single flight), so a flood of one bogus
//! token costs the IdP one call per negative-cache period.

use std::sync::Arc;

use quick_cache::sync::Cache;

use super::principal::Principal;
use super::token_cache::TokenDigest;
use super::verifier::AuthError;

/// What an introspection decided about a token.
#[derive(Clone)]
enum Verdict {
    Active {
        principal: Arc<Principal>,
        expires_at: u64,
    },
    Refused {
        until: u64,
        /// `None`: not active; else why an active answer was refused.
        rejected: Option<String>,
    },
    /// The issuer could not be asked (unreachable, at its rate limit): kept for a moment so
    /// that requests waiting on the same token get the answer together instead of asking
    /// again one after the other.
    Unavailable { until: u64, busy: bool, why: String },
}

/// How long "could not ask" is kept, counted from when the call ended (whole seconds: up
/// to one second beyond, at least to the end of the second).
const UNAVAILABLE_SECONDS: u64 = 1;

impl Verdict {
    fn is_current(&self, now: u64) -> bool {
        match self {
            Verdict::Active { expires_at, .. } => now < *expires_at,
            Verdict::Refused { until, .. } | Verdict::Unavailable { until, .. } => now < *until,
        }
    }

    fn into_result(self) -> Result<Arc<Principal>, AuthError> {
        match self {
            Verdict::Active { principal, .. } => Ok(principal),
            Verdict::Refused { rejected: None, .. } => Err(AuthError::Inactive),
            Verdict::Refused {
                rejected: Some(why),
                ..
            } => Err(AuthError::Rejected(why)),
            Verdict::Unavailable { busy: true, .. } => Err(AuthError::IntrospectionBusy),
            Verdict::Unavailable { why, .. } => Err(AuthError::IntrospectionFailed(why)),
        }
    }
}

/// The verdicts of one verifier, bounded.
pub struct OpaqueVerdicts {
    verdicts: Cache<TokenDigest, Verdict>,
}

/// A verdict found by introspection: the caller and the token's `exp`.
pub type Introspected = Result<(Arc<Principal>, u64), AuthError>;

impl OpaqueVerdicts {
    pub fn new(capacity: usize) -> Self {
        Self {
            verdicts: Cache::new(capacity.max(1)),
        }
    }

    /// The verdict on `digest`: remembered, or found by `introspect` (one call at a time per
    /// token). Failures to ask (IdP unreachable, rate limited) are not remembered.
    pub async fn verdict(
        &self,
        digest: &TokenDigest,
        now: u64,
        negative_ttl_seconds: u64,
        introspect: impl Future<Output = Introspected>,
    ) -> Result<Arc<Principal>, AuthError> {
        let guard = loop {
            match self.verdicts.get_value_or_guard_async(digest).await {
                Ok(verdict) if verdict.is_current(now) => return verdict.into_result(),
                Ok(_) => {
                    // Only if still stale: another task may have just put a fresh one.
                    self.verdicts
                        .remove_if(digest, |verdict| !verdict.is_current(now));
                }
                Err(guard) => break guard,
            }
        };
        let result = introspect.await;
        let verdict = match &result {
            Ok((principal, expires_at)) => Some(Verdict::Active {
                principal: Arc::clone(principal),
                expires_at: *expires_at,
            }),
            Err(AuthError::Inactive) => Some(Verdict::Refused {
                until: now + negative_ttl_seconds,
                rejected: None,
            }),
            Err(AuthError::Rejected(why)) => Some(Verdict::Refused {
                until: now + negative_ttl_seconds,
                rejected: Some(why.clone()),
            }),
            // From the clock after the call (which may have taken seconds), so the verdict
            // still holds for the requests that waited on it.
            Err(AuthError::IntrospectionBusy) => Some(Verdict::Unavailable {
                until: crate::clock::unix_seconds() + UNAVAILABLE_SECONDS,
                busy: true,
                why: String::new(),
            }),
            Err(AuthError::IntrospectionFailed(why)) => Some(Verdict::Unavailable {
                until: crate::clock::unix_seconds() + UNAVAILABLE_SECONDS,
                busy: false,
                why: why.clone(),
            }),
            Err(_) => None,
        };
        match verdict {
            Some(verdict) => {
                let _ = guard.insert(verdict);
            }
            None => drop(guard),
        }
        result.map(|(principal, _)| principal)
    }
}
