//! Access-token verification. Security code: every check is explicit and ordered.
//!
//! 1. Size cap and structure; a `crit` header (we implement no extensions) and a nested JWT
//!    (`cty: JWT`) are refused.
//! 2. The issuer is read from the *unverified* payload only to choose among the configured
//!    issuers (see [`super::unverified`]).
//! 3. The header's `alg` must be one this issuer is configured for (asymmetric only, so
//!    `none` and HMAC-with-a-public-key cannot pass), and its `typ` the required one if set;
//!    `jku`, `x5u`, `jwk` and `x5c` are never used to find keys — keys come only from the
//!    issuer's discovered or configured JWKS. A payload repeating a claim is refused.
//! 4. Signature, then `iss` exactly, `aud`, `exp` and `nbf` with [`IssuerConfig::leeway_seconds`],
//!    and the presence of `sub` and any configured required claims. `iat` is not checked: a
//!    slightly future `iat` from a skewed IdP clock is not an attack.
//!
//! A verified token is remembered until its `exp` (see [`super::token_cache`]).

use std::collections::HashMap;
use std::sync::Arc;

use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Header, Validation, decode, decode_header};
use serde_json::{Map, Value};
use sha2::{Digest, Sha256};

use super::introspection::{self, INTROSPECTION_TIMEOUT, Introspector};
use super::jwks::{KeyCache, RefreshPolicy};
use super::opaque::OpaqueVerdicts;
use super::principal::Principal;
use super::token_cache::{CachedToken, TokenCache};
use super::unverified;
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
    #[error("token is a nested JWT")]
    Nested,
    #[error("token issuer is not trusted")]
    UnknownIssuer,
    #[error("algorithm {0:?} is not allowed for this issuer")]
    AlgorithmNotAllowed(Algorithm),
    #[error("token type {0:?} is not the required one")]
    WrongType(Option<String>),
    #[error("token repeats a claim")]
    DuplicateClaims,
    #[error("no key of the issuer matches the token's kid and algorithm")]
    UnknownKey,
    #[error("the issuer's keys are not available")]
    KeysUnavailable,
    #[error("token is not active (introspection)")]
    Inactive,
    #[error("token introspection failed: {0}")]
    IntrospectionFailed(String),
    #[error("token introspection is at its rate limit")]
    IntrospectionBusy,
    #[error("one-time token has no jti")]
    NoTokenId,
    #[error("one-time token was used before")]
    Replayed,
    #[error("token rejected: {0}")]
    Rejected(String),
}

impl AuthError {
    /// Whether the failure is ours (keys not loaded), not the token's.
    pub fn is_unavailable(&self) -> bool {
        matches!(
            self,
            AuthError::KeysUnavailable
                | AuthError::IntrospectionFailed(_)
                | AuthError::IntrospectionBusy
        )
    }

    /// When to try again after an unavailable verification.
    pub fn retry_after_seconds(&self) -> u64 {
        match self {
            // The limit is per second.
            AuthError::IntrospectionBusy => 1,
            _ => 5,
        }
    }
}

/// One trusted issuer: its settings, its keys, and how to introspect its opaque tokens.
pub struct TrustedIssuer {
    pub config: IssuerConfig,
    pub keys: KeyCache,
    pub introspector: Option<Introspector>,
}

/// Verifies access tokens against the configured issuers.
pub struct Verifier {
    issuers: HashMap<String, Arc<TrustedIssuer>>,
    cache: TokenCache,
    opaque: OpaqueVerdicts,
}

/// Why an issuer's fixed keys could not be loaded; names the setting.
#[derive(Debug, thiserror::Error)]
pub enum IssuerKeysError {
    #[error("issuers[{index}].jwks_file: cannot read {}: {error}", path.display())]
    ReadFile {
        index: usize,
        path: std::path::PathBuf,
        error: std::io::Error,
    },
    #[error("issuers[{index}].{key}: {error}")]
    Fixed {
        index: usize,
        key: &'static str,
        error: super::jwks::FixedKeysError,
    },
}

impl Verifier {
    /// Issuers with fixed keys get them now (an error names the setting); the others load
    /// theirs through [`KeyCache::refresh`]. An issuer whose settings are unchanged since
    /// `previous` keeps its keys (and key cache state).
    pub fn new(
        configs: &[IssuerConfig],
        http: reqwest::Client,
        token_cache_entries: usize,
        previous: Option<&Verifier>,
    ) -> Result<Self, IssuerKeysError> {
        let mut issuers = HashMap::new();
        for (i, config) in configs.iter().enumerate() {
            let unchanged = previous
                .and_then(|p| p.issuers.get(&config.issuer)) // A key file may have changed on disk: reload re-reads it.
                .filter(|old| old.config == *config && config.jwks_file.is_none());
            if let Some(old) = unchanged {
                issuers.insert(config.issuer.clone(), Arc::clone(old));
                continue;
            }
            let policy = RefreshPolicy {
                refetch_cooldown: config.jwks_refetch_cooldown,
                refresh_min: config.jwks_refresh_min,
                refresh_max: config.jwks_refresh_max,
                max_stale: config.jwks_max_stale,
            };
            let issuer = config.issuer.clone();
            let keys = match (&config.jwks_file, &config.jwks_inline) {
                (Some(path), _) => {
                    let text = std::fs::read_to_string(path).map_err(|error| {
                        IssuerKeysError::ReadFile {
                            index: i,
                            path: path.clone(),
                            error,
                        }
                    })?;
                    KeyCache::fixed(issuer, &text, policy).map_err(|error| {
                        IssuerKeysError::Fixed {
                            index: i,
                            key: "jwks_file",
                            error,
                        }
                    })?
                }
                (None, Some(text)) => KeyCache::fixed(issuer, text, policy).map_err(|error| {
                    IssuerKeysError::Fixed {
                        index: i,
                        key: "jwks_inline",
                        error,
                    }
                })?,
                (None, None) => {
                    let endpoints = super::fetch::EndpointRules::of(config);
                    KeyCache::discovered(issuer, http.clone(), policy, endpoints)
                }
            };
            if config.allow_insecure_http {
                tracing::warn!(issuer = %config.issuer, "allow_insecure_http: this issuer's keys and introspection may travel over plain http");
            }
            let introspector = config
                .introspection
                .clone()
                .map(|i| Introspector::new(config, i, http.clone()));
            issuers.insert(
                config.issuer.clone(),
                Arc::new(TrustedIssuer {
                    config: config.clone(),
                    keys,
                    introspector,
                }),
            );
        }
        Ok(Self {
            issuers,
            cache: TokenCache::new(token_cache_entries),
            opaque: OpaqueVerdicts::new(token_cache_entries),
        })
    }

    pub fn issuers(&self) -> impl Iterator<Item = &Arc<TrustedIssuer>> {
        self.issuers.values()
    }

    /// The clock leeway of `issuer` (0 for an unknown one).
    pub fn leeway(&self, issuer: &str) -> u64 {
        self.issuers
            .get(issuer)
            .map_or(0, |i| i.config.leeway_seconds)
    }

    /// Verifies `token` and returns the caller it speaks for.
    pub async fn verify(&self, token: &str) -> Result<Arc<Principal>, AuthError> {
        if token.len() > MAX_TOKEN_BYTES {
            return Err(AuthError::TooLarge);
        }
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        let now = crate::clock::unix_seconds();
        if let Some(hit) = self.cache.get(&digest, now) {
            let key_still_there = self
                .issuers
                .get(&hit.principal.issuer)
                .is_some_and(|i| i.keys.still_has(hit.kid.as_deref()));
            if key_still_there {
                return Ok(hit.principal);
            }
            self.cache.remove(&digest);
        }
        let Ok(header) = decode_header(token) else {
            return self.verify_opaque(token, digest, now).await;
        };
        if header.crit.is_some() {
            return Err(AuthError::CriticalHeader);
        }
        if header
            .cty
            .as_deref()
            .is_some_and(|cty| cty.eq_ignore_ascii_case("JWT"))
        {
            return Err(AuthError::Nested);
        }
        let iss = unverified::issuer(token).ok_or(AuthError::Malformed)?;
        let issuer = self.issuers.get(&iss).ok_or(AuthError::UnknownIssuer)?;
        check_header(&issuer.config, &header)?;
        if unverified::has_duplicate_claims(token) {
            return Err(AuthError::DuplicateClaims);
        }
        let key = match issuer.keys.key_for(header.kid.as_deref(), header.alg).await {
            Some(key) => key,
            None if !issuer.keys.is_loaded() => return Err(AuthError::KeysUnavailable),
            None => return Err(AuthError::UnknownKey),
        };
        let claims =
            decode::<Map<String, Value>>(token, &key.key, &validation(&issuer.config, header.alg))
                .map_err(|e| AuthError::Rejected(rejection_reason(e.kind())))?
                .claims;
        require_claims(&issuer.config, &claims)?;
        // `sub` is required, but "" would make every such token one shared owner.
        if claims
            .get("sub")
            .and_then(Value::as_str)
            .is_none_or(str::is_empty)
        {
            return Err(AuthError::Rejected("empty or non-string sub".into()));
        }
        let expires_at = claims
            .get("exp")
            .and_then(|exp| exp.as_u64().or_else(|| exp.as_f64().map(|f| f as u64)));
        let principal = Arc::new(Principal::from_claims(iss, claims, hex::encode(digest)));
        if let Some(expires_at) = expires_at {
            let entry = CachedToken {
                principal: Arc::clone(&principal),
                expires_at,
                kid: header.kid,
            };
            self.cache.insert(digest, entry, now);
        }
        Ok(principal)
    }
}

impl Verifier {
    /// A token that is not a JWS: an opaque token, if an issuer introspects it (see
    /// [`super::opaque`]).
    async fn verify_opaque(
        &self,
        token: &str,
        digest: [u8; 32],
        now: u64,
    ) -> Result<Arc<Principal>, AuthError> {
        let Some((issuer, introspector)) = self.introspecting_issuer(token) else {
            return Err(AuthError::Malformed);
        };
        // A compact JWS or JWE that did not parse (an algorithm we do not take, an encrypted
        // token) is some issuer's JWT: unless the issuer's own prefix claims it, it must not
        // be shown to the introspecting issuer. (Opaque tokens may contain dots: Hydra's
        // `ory_at_….…`.)
        if issuer.config.opaque_token_prefix.is_none() && unverified::looks_like_jose(token) {
            return Err(AuthError::Malformed);
        }
        let introspect = async {
            let answer =
                tokio::time::timeout(INTROSPECTION_TIMEOUT, introspector.introspect(token))
                    .await
                    .map_err(|_| AuthError::IntrospectionFailed("timed out".into()))??;
            let Some(mut claims) = answer else {
                return Err(AuthError::Inactive);
            };
            let expires_at = introspection::check_claims(&issuer.config, &claims, now)?;
            claims.remove("active");
            let subject = introspection::subject(&claims)?;
            claims.insert("sub".into(), Value::String(subject));
            require_claims(&issuer.config, &claims)?;
            let principal = Arc::new(Principal::from_claims(
                issuer.config.issuer.clone(),
                claims,
                hex::encode(digest),
            ));
            Ok((principal, expires_at))
        };
        let principal = self
            .opaque
            .verdict(
                &digest,
                now,
                issuer.config.introspection_negative_cache.as_secs(),
                introspect,
            )
            .await?;
        Ok(principal)
    }

    /// The one issuer that may see `token`: the only introspecting issuer, or the one whose
    /// `opaque_token_prefix` it starts with.
    fn introspecting_issuer(&self, token: &str) -> Option<(&TrustedIssuer, &Introspector)> {
        let mut fitting = self.issuers.values().filter_map(|issuer| {
            let introspector = issuer.introspector.as_ref()?;
            let fits = issuer
                .config
                .opaque_token_prefix
                .as_deref()
                .is_none_or(|prefix| token.starts_with(prefix));
            fits.then_some((issuer.as_ref(), introspector))
        });
        let first = fitting.next()?;
        // Two would only fit a configuration the validation refuses; show neither.
        fitting.next().is_none().then_some(first)
    }
}

/// The claims the issuer's configuration requires beyond the standard ones.
fn require_claims(issuer: &IssuerConfig, claims: &Map<String, Value>) -> Result<(), AuthError> {
    match issuer
        .required_claims
        .iter()
        .find(|c| !claims.contains_key(c.as_str()))
    {
        Some(missing) => Err(AuthError::Rejected(format!("missing claim {missing}"))),
        None => Ok(()),
    }
}

/// The issuer's rules on the header: allowed algorithm, required `typ`.
fn check_header(issuer: &IssuerConfig, header: &Header) -> Result<(), AuthError> {
    if !issuer.algorithms.contains(&header.alg) {
        return Err(AuthError::AlgorithmNotAllowed(header.alg));
    }
    if let Some(required) = &issuer.require_typ {
        let fits = header.typ.as_deref().is_some_and(|typ| {
            let typ = typ.strip_prefix("application/").unwrap_or(typ);
            typ.eq_ignore_ascii_case(required)
        });
        if !fits {
            return Err(AuthError::WrongType(header.typ.clone()));
        }
    }
    Ok(())
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
