//! `[[issuers]]`: the OpenID providers whose tokens are accepted.

use std::path::PathBuf;
use std::time::Duration;

use jsonwebtoken::Algorithm;
use serde::Deserialize;

use super::Secret;

/// `[[issuers]]`: an OpenID provider whose access tokens stepgate accepts.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Compared exactly with the token's `iss`; keys come from its OIDC discovery document.
    pub issuer: String,
    /// A token must name at least one of these in `aud`.
    pub audiences: Vec<String>,
    /// Signature algorithms accepted from this issuer (asymmetric only).
    #[serde(default = "default_algorithms")]
    pub algorithms: Vec<Algorithm>,
    /// Clock skew tolerated on `exp` and `nbf`, in seconds: the unit of those claims and of
    /// the JWT library's leeway, so it stays a number.
    #[serde(default = "default_leeway")]
    pub leeway_seconds: u64,
    /// Minimum time between two JWKS fetches caused by unknown `kid`s.
    #[serde(
        rename = "jwks_refetch_cooldown_seconds",
        with = "super::duration::seconds",
        default = "default_refetch_cooldown"
    )]
    pub jwks_refetch_cooldown: Duration,
    /// Bounds on the periodic JWKS refresh, which follows the response's `Cache-Control`.
    #[serde(
        rename = "jwks_refresh_min_seconds",
        with = "super::duration::seconds",
        default = "default_refresh_min"
    )]
    pub jwks_refresh_min: Duration,
    #[serde(
        rename = "jwks_refresh_max_seconds",
        with = "super::duration::seconds",
        default = "default_refresh_max"
    )]
    pub jwks_refresh_max: Duration,
    /// How long the last good keys keep serving while the issuer cannot be reached.
    #[serde(
        rename = "jwks_max_stale_seconds",
        with = "super::duration::seconds",
        default = "default_max_stale"
    )]
    pub jwks_max_stale: Duration,
    /// A fixed JWKS file instead of discovery (air-gapped sites).
    pub jwks_file: Option<PathBuf>,
    /// A fixed JWKS document, inline, instead of discovery.
    pub jwks_inline: Option<String>,
    /// Require this JWT `typ` header, e.g. `at+jwt` (RFC 9068); `application/at+jwt` matches too.
    pub require_typ: Option<String>,
    /// Claims a token must carry beyond `exp`, `iss`, `aud` and `sub`.
    #[serde(default)]
    pub required_claims: Vec<String>,
    /// Accept this issuer's opaque (non-JWT) tokens, verified by RFC 7662 introspection.
    pub introspection: Option<IntrospectionConfig>,
    /// Opaque tokens that start with this go to this issuer's introspection, and no others;
    /// required of each issuer when more than one introspects (a token is never shown to an
    /// issuer that did not mint it).
    pub opaque_token_prefix: Option<String>,
    /// How long an introspection's "not active" is remembered (by the token's hash).
    #[serde(
        rename = "introspection_negative_cache_seconds",
        with = "super::duration::seconds",
        default = "default_introspection_negative_cache"
    )]
    pub introspection_negative_cache: Duration,
    /// Introspection calls per second to this issuer at most (per process); beyond, callers
    /// with unknown opaque tokens get 503.
    #[serde(default = "default_introspection_rate")]
    pub introspection_max_per_second: u32,
    /// Let discovery, the JWKS and introspection use plain `http` (a warning at start).
    /// Without it they must be `https`, or `http` on loopback for a loopback issuer.
    #[serde(default)]
    pub allow_insecure_http: bool,
}

fn default_introspection_negative_cache() -> Duration {
    Duration::from_secs(60)
}

fn default_introspection_rate() -> u32 {
    50
}

/// `introspection = { client_id = "stepgate", client_secret = "…" }` of an issuer.
#[derive(Debug, Clone, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// stepgate's own client at the issuer.
    pub client_id: String,
    pub client_secret: Secret,
    /// Default: the discovery document's `introspection_endpoint`.
    pub endpoint: Option<String>,
}

fn default_refresh_min() -> Duration {
    Duration::from_secs(60)
}

fn default_refresh_max() -> Duration {
    Duration::from_secs(3600)
}

fn default_max_stale() -> Duration {
    Duration::from_secs(24 * 3600)
}

fn default_algorithms() -> Vec<Algorithm> {
    vec![Algorithm::RS256]
}

/// 30 s: enough for NTP-synchronised hosts, small next to a typical 5–60 minute token life.
fn default_leeway() -> u64 {
    30
}

fn default_refetch_cooldown() -> Duration {
    Duration::from_secs(30)
}

impl IssuerConfig {
    /// Its problems, named by `issuers[i]`'s keys; `earlier` are the issuers listed before it.
    pub(super) fn check(
        &self,
        i: usize,
        earlier: &[IssuerConfig],
        problems: &mut super::validate::Problems,
    ) {
        let key = |field: &str| format!("issuers[{i}].{field}");
        if reqwest::Url::parse(&self.issuer).is_err() {
            problems.add(key("issuer"), format!("{:?} is not a URL", self.issuer));
        }
        if earlier.iter().any(|other| other.issuer == self.issuer) {
            problems.add(key("issuer"), "the same issuer is configured twice");
        }
        if self.audiences.is_empty() {
            problems.add(key("audiences"), "at least one audience is required");
        }
        if self.algorithms.is_empty() {
            problems.add(key("algorithms"), "at least one algorithm is required");
        }
        if self.jwks_file.is_some() && self.jwks_inline.is_some() {
            problems.add(key("jwks_file"), "set jwks_file or jwks_inline, not both");
        }
        if self.jwks_refresh_min.is_zero() || self.jwks_refresh_min > self.jwks_refresh_max {
            problems.add(
                key("jwks_refresh_min_seconds"),
                "must be at least 1 and at most jwks_refresh_max_seconds",
            );
        }
        if self.jwks_max_stale < self.jwks_refresh_max {
            problems.add(
                key("jwks_max_stale_seconds"),
                "must be at least jwks_refresh_max_seconds, or keys go stale between refreshes",
            );
        }
        if let Err(e) = crate::auth::fetch::check_issuer(self) {
            problems.add(key("issuer"), e.to_string());
        }
        if let Some(endpoint) = self
            .introspection
            .as_ref()
            .and_then(|i| i.endpoint.as_deref())
            && let Err(e) = crate::auth::fetch::EndpointRules::of(self).check(endpoint)
        {
            problems.add(key("introspection.endpoint"), e.to_string());
        }
        if self.introspection_max_per_second == 0 {
            problems.add(key("introspection_max_per_second"), "must be at least 1");
        }
        for alg in &self.algorithms {
            if matches!(alg, Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512) {
                problems.add(
                    key("algorithms"),
                    format!("{alg:?} is symmetric; only public-key algorithms are accepted"),
                );
            }
        }
    }
}
