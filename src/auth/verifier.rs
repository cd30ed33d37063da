//! Access-token verification. Security code: every check is explicit and ordered.
//!
//! 1. Size cap and structure; a `crit` header is refused (we implement no extensions).
//! 2. The issuer is read from the *unverified* payload only to choose among the configured
//!    issuers; nothing else from it is trusted before the signature is checked.
//! 3. The header's `alg` must be one this issuer is configured for (asymmetric only, so
//!    `none` and HMAC-with-a-public-key cannot pass); `jku`, `x5u`, `jwk` and `x5c` are
//!    never used to find keys — keys come only from the issuer's discovered JWKS.
//! 4. Signature, then `iss` exactly, `aud`, `exp` and `nbf` with [`IssuerConfig::leeway_seconds`].
//!    `iat` is not checked: a slightly future `iat` from a skewed IdP clock is not an attack.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation, decode, decode_header};
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::jwks::KeyCache;
use super::principal::Principal;
use crate::config::IssuerConfig;

/// Tokens larger than this are refused unparsed (a JWT access token is typically < 2 KiB).
pub const MAX_TOKEN_BYTES: usize = 16 * 1024;

/// Why a token was not accepted. The reason goes to logs and the audit trail; callers only
/// learn `invalid_token` (RFC 6750).
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("token is larger than {MAX_TOKEN_BYTES} bytes")]
    TooLarge,
    #[error("token is not a well-formed JWS")]
    Malformed,
    #[error("token carries a critical header extension")]
    CriticalHeader,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("algorithm {0:?} is not allowed for this issuer")]
    AlgorithmNotAllowed(Algorithm),
    #[error("no key of the issuer matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the issuer's keys are not available yet")]
    KeysUnavailable,
    #[error("token rejected: {0}")]
    Rejected(String),
}

impl AuthError {
    /// Whether the failure is ours (keys not loaded), not the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, AuthError::KeysUnavailable)
    }
}

/// Read from the unverified payload.
#[derive(Deserialize)]
struct UnverifiedIssuer {
    iss: String,
}

/// One trusted issuer: its settings and its keys.
pub struct TrustedIssuer {
    pub config: IssuerConfig,
    pub keys: KeyCache,
}

/// Verifies access tokens against the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<TrustedIssuer>>,
}

impl Verifier {
    pub fn new(configs: &[IssuerConfig], http: reqwest::Client) -> Self {
        let issuers = configs
            .iter()
            .map(|c| {
                let cooldown = Duration::from_secs(c.jwks_refetch_cooldown_seconds);
                let keys = KeyCache::new(c.issuer.clone(), http.clone(), cooldown);
                (
                    c.issuer.clone(),
                    Arc::new(TrustedIssuer {
                        config: c.clone(),
                        keys,
                    }),
                )
            })
            .collect();
        Self { issuers }
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<TrustedIssuer>> {
        self.issuers.values()
    }

    /// The `iss` of a token, unverified: **only** for the audit record of a refused token.
    pub fn unverified_issuer(token: &str) -> Option<String> {
        jsonwebtoken::dangerous::insecure_decode::<UnverifiedIssuer>(token)
            .ok()
            .map(|t| t.claims.iss)
    }

    /// Verifies `token` and returns the caller it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let header = decode_header(token).map_err(|_| AuthError::Malformed)?;
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        // The payload is read unverified here only to pick the issuer (see module docs).
        let iss = Self::unverified_issuer(token).ok_or(AuthError::Malformed)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::UnknownIssuer)?;
        if !issuer.config.algorithms.contains(&header.alg) {
            return Err(AuthError::AlgorithmNotAllowed(header.alg));
        }
        let key = issuer.keys.key_for(header.kid.as_deref(), header.alg).await;
        let key = match key {
            Some(key) => key,
            None if !issuer.keys.is_loaded() => return Err(AuthError::KeysUnavailable),
            None => return Err(AuthError::UnknownKey),
        };
        let claims =
            decode::<Map<String, Value>>(token, &key.key, &validation(&issuer.config, header.alg))
                .map_err(|e| AuthError::Rejected(rejection_reason(e.kind())))?
                .claims;
        Ok(Principal::from_claims(iss, claims, token_sha256(token)))
    }
}

/// The explicit validation for one issuer and the (already allow-listed) algorithm.
fn validation(issuer: &IssuerConfig, alg: Algorithm) -> Validation {
    let mut v = Validation::new(alg);
    v.algorithms = vec![alg];
    v.required_spec_claims = ["exp", "iss", "aud", "sub"]
        .into_iter()
        .map(String::from)
        .collect();
    v.validate_exp = true;
    v.validate_nbf = true;
    v.leeway = issuer.leeway_seconds;
    v.set_issuer(&[&issuer.issuer]);
    v.set_audience(&issuer.audiences);
    v
}

fn rejection_reason(kind: &ErrorKind) -> String {
    match kind {
        ErrorKind::InvalidSignature => "bad signature".into(),
        ErrorKind::ExpiredSignature => "expired".into(),
        ErrorKind::ImmatureSignature => "not yet valid (nbf)".into(),
        ErrorKind::InvalidAudience => "wrong audience".into(),
        ErrorKind::InvalidIssuer => "wrong issuer".into(),
        ErrorKind::InvalidAlgorithm => "algorithm does not fit the key".into(),
        ErrorKind::MissingRequiredClaim(claim) => format!("missing claim {claim}"),
        ErrorKind::InvalidClaimFormat(claim) => format!("malformed claim {claim}"),
        other => format!("{other:?}"),
    }
}

/// SHA-256 of a token, hex: identifies a token in logs and audit records without revealing it.
pub fn token_sha256(token: &str) -> String {
    hex::encode(Sha256::digest(token.as_bytes()))
}
