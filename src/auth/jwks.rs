//! The signing keys of one trusted issuer: found through OIDC discovery and cached, or fixed
//! in the configuration for air-gapped sites.
//!
//! Keys are looked up by `kid`. An unknown `kid` may mean the issuer rotated its key, so it
//! triggers a refetch — but at most one per cooldown, and a single one however many requests
//! arrive at once (the refetch lock is held across the fetch; waiters re-check the cache
//! after it). Without this, a rotation either breaks every caller until restart (Envoy
//! #39643) or lets a flood of bogus `kid`s hammer the identity provider.
//!
//! Keys are also refreshed periodically, as often as the JWKS response's `Cache-Control`
//! says within configured bounds. When the issuer cannot be reached, the last good keys keep
//! serving until `max_stale` after they were fetched; a key missing from a fetched JWKS stops
//! verifying at once.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use serde::Deserialize;

use super::fetch::{EndpointRules, FetchRefused, MAX_DISCOVERY_BYTES, MAX_JWKS_BYTES, json_capped};

/// Why the keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
    #[error("JWKS fetch failed: {0}")]
    Jwks(#[from] reqwest::Error),
    #[error("JWKS fetch refused: {0}")]
    Refused(#[from] FetchRefused),
}

/// Why a fixed key set (`jwks_file`, `jwks_inline`) cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum FixedKeysError {
    #[error("not a JWKS document: {0}")]
    NotJwks(serde_json::Error),
    #[error("the JWKS holds no usable signature verification key")]
    NoUsableKey,
}

/// How an issuer's keys are kept fresh.
#[derive(Debug, Clone, Copy)]
pub struct RefreshPolicy {
    /// Minimum time between two fetches caused by unknown `kid`s.
    pub refetch_cooldown: Duration,
    /// Bounds on the periodic refresh interval taken from `Cache-Control: max-age`.
    pub refresh_min: Duration,
    pub refresh_max: Duration,
    /// How long the last good keys keep serving while the issuer cannot be reached.
    pub max_stale: Duration,
}

/// A public key usable for verification.
pub struct VerificationKey {
    pub key: DecodingKey,
    /// The key's own `alg`, when the JWKS states one: the token must use exactly that.
    pub alg: Option<Algorithm>,
    family: KeyFamily,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum KeyFamily {
    Rsa,
    Ec,
    Okp,
}

impl VerificationKey {
    /// Whether this key may verify a token signed with `alg`: the key type must fit the
    /// algorithm family, and a key that names its algorithm accepts only that one.
    pub fn fits(&self, alg: Algorithm) -> bool {
        let family = match alg {
            Algorithm::RS256 | Algorithm::RS384 | Algorithm::RS512 => KeyFamily::Rsa,
            Algorithm::PS256 | Algorithm::PS384 | Algorithm::PS512 => KeyFamily::Rsa,
            Algorithm::ES256 | Algorithm::ES384 => KeyFamily::Ec,
            Algorithm::EdDSA => KeyFamily::Okp,
            // Never verify an HMAC with a public key: that is the classic key-confusion attack.
            Algorithm::HS256 | Algorithm::HS384 | Algorithm::HS512 => return false,
        };
        family == self.family && self.alg.is_none_or(|own| own == alg)
    }
}

/// A snapshot of an issuer's keys.
#[derive(Default)]
struct KeySet {
    by_kid: HashMap<String, Arc<VerificationKey>>,
    without_kid: Vec<Arc<VerificationKey>>,
    /// When these keys were fetched (`None` for fixed keys and before the first fetch).
    fetched_at: Option<Instant>,
    /// When to fetch again after `fetched_at`.
    refresh_after: Duration,
    /// Past this the keys are too stale to trust (`None`: never, for fixed keys).
    usable_until: Option<Instant>,
    loaded: bool,
}

impl KeySet {
    /// Keys that cannot verify anything (encryption keys, symmetric keys, odd JWKs) are skipped.
    fn parse(document: RawJwks) -> Self {
        let mut set = KeySet {
            loaded: true,
            ..KeySet::default()
        };
        for raw in document.keys {
            let Ok(jwk) = serde_json::from_value::<Jwk>(raw) else {
                continue;
            };
            let Some(key) = verification_key(&jwk) else {
                continue;
            };
            match jwk.common.key_id {
                Some(kid) => {
                    set.by_kid.insert(kid, Arc::new(key));
                }
                None => set.without_kid.push(Arc::new(key)),
            }
        }
        set
    }

    fn len(&self) -> usize {
        self.by_kid.len() + self.without_kid.len()
    }

    fn is_usable(&self) -> bool {
        self.loaded && self.usable_until.is_none_or(|until| Instant::now() < until)
    }
}

/// Where the keys come from.
enum Source {
    /// OIDC discovery of the issuer, then its `jwks_uri`, each URL as the rules allow.
    Discovery(EndpointRules),
    /// A fixed JWKS from the configuration: never fetched.
    Fixed,
}

/// The cached keys of one issuer.
pub struct KeyCache {
    issuer: String,
    source: Source,
    http: reqwest::Client,
    policy: RefreshPolicy,
    keys: RwLock<Arc<KeySet>>,
    /// Held across a fetch: the single flight. Holds the time of the last fetch.
    refetch: tokio::sync::Mutex<Option<Instant>>,
    /// The issuer's token endpoint, from its discovery document (for the API docs).
    token_endpoint: RwLock<Option<String>>,
}

impl KeyCache {
    /// Keys found by OIDC discovery of `issuer`; none until the first [`KeyCache::refresh`].
    pub fn discovered(
        issuer: String,
        http: reqwest::Client,
        policy: RefreshPolicy,
        endpoints: EndpointRules,
    ) -> Self {
        Self::with(
            issuer,
            Source::Discovery(endpoints),
            http,
            policy,
            KeySet::default(),
        )
    }

    /// Fixed keys from a JWKS document.
    pub fn fixed(
        issuer: String,
        jwks: &str,
        policy: RefreshPolicy,
    ) -> Result<Self, FixedKeysError> {
        let document: RawJwks = serde_json::from_str(jwks).map_err(FixedKeysError::NotJwks)?;
        let set = KeySet::parse(document);
        if set.len() == 0 {
            return Err(FixedKeysError::NoUsableKey);
        }
        Ok(Self::with(
            issuer,
            Source::Fixed,
            reqwest::Client::new(),
            policy,
            set,
        ))
    }

    fn with(
        issuer: String,
        source: Source,
        http: reqwest::Client,
        policy: RefreshPolicy,
        set: KeySet,
    ) -> Self {
        Self {
            issuer,
            source,
            http,
            policy,
            keys: RwLock::new(Arc::new(set)),
            refetch: tokio::sync::Mutex::new(None),
            token_endpoint: RwLock::new(None),
        }
    }

    /// Whether usable keys are loaded (fetched, and not staler than the bound).
    pub fn is_loaded(&self) -> bool {
        self.snapshot().is_usable()
    }

    /// Whether the key `kid` is still among the issuer's current, usable keys.
    pub fn still_has(&self, kid: Option<&str>) -> bool {
        let keys = self.snapshot();
        keys.is_usable() && kid.is_none_or(|kid| keys.by_kid.contains_key(kid))
    }

    /// How long until the keys are due for a refresh; `None` for fixed keys.
    pub fn next_refresh_in(&self) -> Option<Duration> {
        match self.source {
            Source::Fixed => None,
            Source::Discovery(_) => {
                let keys = self.snapshot();
                Some(keys.fetched_at.map_or(Duration::ZERO, |at| {
                    keys.refresh_after.saturating_sub(at.elapsed())
                }))
            }
        }
    }

    fn snapshot(&self) -> Arc<KeySet> {
        // A poisoned lock only means a writer panicked between two whole-value stores.
        self.keys
            .read()
            .map(|k| Arc::clone(&k))
            .unwrap_or_else(|p| Arc::clone(&p.into_inner()))
    }

    fn lookup(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerificationKey>> {
        let keys = self.snapshot();
        if !keys.is_usable() {
            return None;
        }
        match kid {
            Some(kid) => keys.by_kid.get(kid).filter(|k| k.fits(alg)).cloned(),
            // Without a `kid` only an unambiguous key is acceptable.
            None => {
                let mut fitting = keys
                    .by_kid
                    .values()
                    .chain(&keys.without_kid)
                    .filter(|k| k.fits(alg));
                match (fitting.next(), fitting.next()) {
                    (Some(only), None) => Some(Arc::clone(only)),
                    _ => None,
                }
            }
        }
    }

    /// The key for `kid`, refetching the JWKS once per cooldown when it is unknown.
    pub async fn key_for(&self, kid: Option<&str>, alg: Algorithm) -> Option<Arc<VerificationKey>> {
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        if matches!(self.source, Source::Fixed) {
            return None;
        }
        let mut last_fetch = self.refetch.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.policy.refetch_cooldown) {
            return None;
        }
        *last_fetch = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.lookup(kid, alg)
    }

    /// Fetches the keys now (start-up and periodic refresh); counts as a fetch for the
    /// cooldown. On failure the last good keys keep serving, up to `max_stale`.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        if matches!(self.source, Source::Fixed) {
            return Ok(self.snapshot().len());
        }
        let mut last_fetch = self.refetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch().await
    }

    /// Discovery, then the JWKS it names; counted by outcome.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let fetched = self.fetch_keys().await;
        crate::metrics::metrics()
            .jwks_fetches
            .get_or_create(&crate::metrics::JwksLabels {
                issuer: self.issuer.clone(),
                outcome: if fetched.is_ok() { "ok" } else { "error" },
            })
            .inc();
        fetched
    }

    async fn fetch_keys(&self) -> Result<usize, FetchError> {
        let Source::Discovery(endpoints) = self.source else {
            return Ok(self.snapshot().len());
        };
        let jwks_uri = endpoints.check(&self.discover_jwks_uri(&endpoints).await?)?;
        let response = self.http.get(jwks_uri).send().await?;
        let refresh_after = refresh_interval(response.headers(), &self.policy);
        let mut set = KeySet::parse(json_capped::<RawJwks>(response, MAX_JWKS_BYTES).await?);
        let now = Instant::now();
        set.fetched_at = Some(now);
        set.refresh_after = refresh_after;
        set.usable_until = Some(now + self.policy.max_stale);
        let count = set.len();
        *self.keys.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(set);
        tracing::info!(issuer = %self.issuer, keys = count, refresh_s = refresh_after.as_secs(), "loaded issuer signing keys");
        Ok(count)
    }
}

impl KeyCache {
    /// The issuer's `jwks_uri` from its OIDC discovery document, whose `issuer` must be
    /// exactly the configured one (OpenID Connect Discovery §4.3). The document is parsed
    /// with `openidconnect`'s types; its own discovery call is not used because it also
    /// fetches the JWKS (a second fetch per refresh), and here the JWKS response's cache
    /// headers matter.
    async fn discover_jwks_uri(&self, endpoints: &EndpointRules) -> Result<String, FetchError> {
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| FetchError::Discovery(e.to_string()))?;
        let url = issuer
            .join(".well-known/openid-configuration")
            .map_err(|e| FetchError::Discovery(e.to_string()))?;
        let url = endpoints.check(url.as_str())?;
        let response = self.http.get(url).send().await?;
        let metadata: CoreProviderMetadata = json_capped(response, MAX_DISCOVERY_BYTES).await?;
        if metadata.issuer().as_str() != self.issuer {
            return Err(FetchError::Discovery(format!(
                "the discovery document names issuer {:?}, not {:?}",
                metadata.issuer().as_str(),
                self.issuer
            )));
        }
        *self
            .token_endpoint
            .write()
            .unwrap_or_else(|p| p.into_inner()) =
            metadata.token_endpoint().map(|url| url.url().to_string());
        Ok(metadata.jwks_uri().url().to_string())
    }

    /// The token endpoint discovery announced, once keys were fetched by discovery.
    pub fn token_endpoint(&self) -> Option<String> {
        self.token_endpoint
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// A JWKS document, its keys parsed one by one so one odd key cannot hide the others.
#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
}

/// `Cache-Control: max-age` of the JWKS response, clamped to the configured bounds; the
/// upper bound when the response says nothing, the lower when it forbids caching.
fn refresh_interval(headers: &reqwest::header::HeaderMap, policy: &RefreshPolicy) -> Duration {
    let values = headers
        .get_all(reqwest::header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok());
    let mut interval = policy.refresh_max;
    for directive in values.flat_map(|v| v.split(',')).map(str::trim) {
        if let Some(seconds) = directive
            .strip_prefix("max-age=")
            .and_then(|s| s.parse::<u64>().ok())
        {
            interval = Duration::from_secs(seconds);
        } else if directive.eq_ignore_ascii_case("no-cache")
            || directive.eq_ignore_ascii_case("no-store")
        {
            interval = policy.refresh_min;
        }
    }
    interval.clamp(policy.refresh_min, policy.refresh_max)
}

fn verification_key(jwk: &Jwk) -> Option<VerificationKey> {
    if matches!(jwk.common.public_key_use, Some(PublicKeyUse::Encryption)) {
        return None;
    }
    let family = match jwk.algorithm {
        AlgorithmParameters::RSA(_) => KeyFamily::Rsa,
        AlgorithmParameters::EllipticCurve(_) => KeyFamily::Ec,
        AlgorithmParameters::OctetKeyPair(_) => KeyFamily::Okp,
        // Symmetric keys never verify tokens here.
        AlgorithmParameters::OctetKey(_) => return None,
    };
    let alg = match jwk.common.key_algorithm {
        None => None,
        Some(KeyAlgorithm::RS256) => Some(Algorithm::RS256),
        Some(KeyAlgorithm::RS384) => Some(Algorithm::RS384),
        Some(KeyAlgorithm::RS512) => Some(Algorithm::RS512),
        Some(KeyAlgorithm::PS256) => Some(Algorithm::PS256),
        Some(KeyAlgorithm::PS384) => Some(Algorithm::PS384),
        Some(KeyAlgorithm::PS512) => Some(Algorithm::PS512),
        Some(KeyAlgorithm::ES256) => Some(Algorithm::ES256),
        Some(KeyAlgorithm::ES384) => Some(Algorithm::ES384),
        Some(KeyAlgorithm::EdDSA) => Some(Algorithm::EdDSA),
        // HMAC or encryption algorithms: not a signature verification key.
        Some(_) => return None,
    };
    let key = DecodingKey::from_jwk(jwk).ok()?;
    Some(VerificationKey { key, alg, family })
}

#[cfg(test)]
mod tests {
    use reqwest::header::{CACHE_CONTROL, HeaderMap, HeaderValue};

    use super::*;

    fn policy() -> RefreshPolicy {
        RefreshPolicy {
            refetch_cooldown: Duration::from_secs(30),
            refresh_min: Duration::from_secs(60),
            refresh_max: Duration::from_secs(3600),
            max_stale: Duration::from_secs(86_400),
        }
    }

    fn interval(cache_control: Option<&'static str>) -> u64 {
        let mut headers = HeaderMap::new();
        if let Some(value) = cache_control {
            headers.insert(CACHE_CONTROL, HeaderValue::from_static(value));
        }
        refresh_interval(&headers, &policy()).as_secs()
    }

    #[test]
    fn the_refresh_interval_follows_cache_control_within_bounds() {
        assert_eq!(interval(Some("public, max-age=600")), 600);
        assert_eq!(interval(Some("max-age=5")), 60, "not below the minimum");
        assert_eq!(
            interval(Some("max-age=999999")),
            3600,
            "not above the maximum"
        );
        assert_eq!(interval(Some("no-store")), 60);
        assert_eq!(interval(None), 3600);
    }

    #[test]
    fn fixed_keys_need_at_least_one_verification_key() {
        assert!(KeyCache::fixed("i".into(), r#"{"keys": []}"#, policy()).is_err());
        let symmetric = r#"{"keys": [{"kty": "oct", "k": "c2VjcmV0", "kid": "h"}]}"#;
        assert!(
            KeyCache::fixed("i".into(), symmetric, policy()).is_err(),
            "a shared secret is no verification key"
        );
        assert!(KeyCache::fixed("i".into(), "not json", policy()).is_err());
    }
}
