//! The signing keys of one trusted issuer, found through OIDC discovery and cached.
//!
//! Keys are looked up by `kid`. An unknown `kid` may mean the issuer rotated its key, so it
//! triggers a refetch — but at most one per cooldown, and a single one however many requests
//! arrive at once (the refetch lock is held across the fetch; waiters re-check the cache
//! after it). Without this, a rotation either breaks every caller until restart (Envoy
//! #39643) or lets a flood of bogus `kid`s hammer the identity provider.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use jsonwebtoken::jwk::{AlgorithmParameters, Jwk, KeyAlgorithm, PublicKeyUse};
use jsonwebtoken::{Algorithm, DecodingKey};
use openidconnect::IssuerUrl;
use openidconnect::core::CoreProviderMetadata;
use serde::Deserialize;

/// Why the keys could not be fetched.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    #[error("OIDC discovery failed: {0}")]
    Discovery(String),
    #[error("JWKS fetch failed: {0}")]
    Jwks(#[from] reqwest::Error),
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
    loaded: bool,
}

/// The cached keys of one issuer.
pub struct KeyCache {
    issuer: String,
    http: reqwest::Client,
    cooldown: Duration,
    keys: RwLock<Arc<KeySet>>,
    /// Held across a fetch: the single flight. Holds the time of the last fetch.
    refetch: tokio::sync::Mutex<Option<Instant>>,
}

impl KeyCache {
    pub fn new(issuer: String, http: reqwest::Client, cooldown: Duration) -> Self {
        Self {
            issuer,
            http,
            cooldown,
            keys: RwLock::new(Arc::new(KeySet::default())),
            refetch: tokio::sync::Mutex::new(None),
        }
    }

    /// Whether a key set was ever loaded.
    pub fn is_loaded(&self) -> bool {
        self.snapshot().loaded
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
        let mut last_fetch = self.refetch.lock().await;
        // Another request may have refreshed while this one waited for the lock.
        if let Some(key) = self.lookup(kid, alg) {
            return Some(key);
        }
        if last_fetch.is_some_and(|at| at.elapsed() < self.cooldown) {
            return None;
        }
        *last_fetch = Some(Instant::now());
        if let Err(e) = self.fetch().await {
            tracing::warn!(issuer = %self.issuer, error = %e, "JWKS refetch for an unknown kid failed");
        }
        self.lookup(kid, alg)
    }

    /// Fetches the keys now (start-up and periodic refresh); recorded as a fetch for the cooldown.
    pub async fn refresh(&self) -> Result<usize, FetchError> {
        let mut last_fetch = self.refetch.lock().await;
        *last_fetch = Some(Instant::now());
        self.fetch().await
    }

    /// Discovery, then the JWKS it names. Keys that cannot verify anything are skipped.
    async fn fetch(&self) -> Result<usize, FetchError> {
        let issuer = IssuerUrl::new(self.issuer.clone())
            .map_err(|e| FetchError::Discovery(e.to_string()))?;
        // Discovery also checks that the document's `issuer` is exactly the configured one.
        let metadata = CoreProviderMetadata::discover_async(issuer, &self.http)
            .await
            .map_err(|e| FetchError::Discovery(error_chain(&e)))?;
        let document: RawJwks = self
            .http
            .get(metadata.jwks_uri().url().as_str())
            .send()
            .await?
            .error_for_status()?
            .json()
            .await?;
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
        let count = set.by_kid.len() + set.without_kid.len();
        let mut keys = self.keys.write().unwrap_or_else(|p| p.into_inner());
        *keys = Arc::new(set);
        tracing::info!(issuer = %self.issuer, keys = count, "loaded issuer signing keys");
        Ok(count)
    }
}

/// A JWKS document, its keys parsed one by one so one odd key cannot hide the others.
#[derive(Deserialize)]
struct RawJwks {
    keys: Vec<serde_json::Value>,
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

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
