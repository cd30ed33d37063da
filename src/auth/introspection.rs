//! Opaque access tokens, verified by asking their issuer (RFC 7662 token introspection)
//! with stepgate's own client credentials.
//!
//! The answer must say `active: true`; its `iss` (when given) must be the issuer, its `aud`
//! must name an accepted audience, `exp`/`nbf` must hold (with leeway), and it must name a
//! caller (`sub`, or else `client_id`). Calls are bounded per issuer
//! (`introspection_max_per_second`, exact over any second); which tokens reach which issuer
//! and what is remembered of the answers is [`super::opaque`]'s job.

use std::collections::VecDeque;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::OnceCell;

use super::fetch::{EndpointRules, MAX_DISCOVERY_BYTES, MAX_INTROSPECTION_BYTES, json_capped};
use super::verifier::AuthError;
use crate::config::{IntrospectionConfig, IssuerConfig};

/// Introspection of one issuer's tokens.
pub struct Introspector {
    issuer: String,
    config: IntrospectionConfig,
    http: reqwest::Client,
    endpoints: EndpointRules,
    /// From the configuration, or else the discovery document's `introspection_endpoint`.
    endpoint: OnceCell<String>,
    calls: CallLimit,
}

impl Introspector {
    pub fn new(issuer: &IssuerConfig, config: IntrospectionConfig, http: reqwest::Client) -> Self {
        let endpoint = config
            .endpoint
            .clone()
            .map_or_else(OnceCell::new, |e| OnceCell::new_with(Some(e)));
        Self {
            issuer: issuer.issuer.clone(),
            config,
            http,
            endpoints: EndpointRules::of(issuer),
            endpoint,
            calls: CallLimit::new(issuer.introspection_max_per_second),
        }
    }

    /// The token's claims if the issuer says it is active; `None` if it says it is not.
    pub async fn introspect(&self, token: &str) -> Result<Option<Map<String, Value>>, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::IntrospectionFailed(e.to_string());
        // Counted before discovery too: while discovery fails, each attempt is a call.
        if !self.calls.try_take(Instant::now()) {
            return Err(AuthError::IntrospectionBusy);
        }
        let endpoint = self.endpoint.get_or_try_init(|| self.discover()).await?;
        let endpoint = self
            .endpoints
            .check(endpoint)
            .map_err(|e| unavailable(&e))?;
        let response = self
            .http
            .post(endpoint)
            .basic_auth(
                &self.config.client_id,
                Some(self.config.client_secret.expose()),
            )
            .form(&[("token", token), ("token_type_hint", "access_token")])
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let reply: Map<String, Value> = json_capped(response, MAX_INTROSPECTION_BYTES)
            .await
            .map_err(|e| unavailable(&e))?;
        if reply.get("active") != Some(&Value::Bool(true)) {
            return Ok(None);
        }
        Ok(Some(reply))
    }

    async fn discover(&self) -> Result<String, AuthError> {
        let unavailable = |e: &dyn std::fmt::Display| AuthError::IntrospectionFailed(e.to_string());
        let url = format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        );
        let url = self.endpoints.check(&url).map_err(|e| unavailable(&e))?;
        let response = self
            .http
            .get(url)
            .send()
            .await
            .map_err(|e| unavailable(&e))?;
        let document: Value = json_capped(response, MAX_DISCOVERY_BYTES)
            .await
            .map_err(|e| unavailable(&e))?;
        document["introspection_endpoint"]
            .as_str()
            .map(str::to_owned)
            .ok_or_else(|| {
                AuthError::IntrospectionFailed("the issuer names no introspection_endpoint".into())
            })
    }
}

/// At most `per_second` calls in any second (a sliding log of the last calls' times), so
/// the IdP never sees more, however the calls bunch up.
struct CallLimit {
    per_second: usize,
    recent: Mutex<VecDeque<Instant>>,
}

impl CallLimit {
    fn new(per_second: u32) -> Self {
        Self {
            per_second: per_second.max(1) as usize,
            recent: Mutex::new(VecDeque::new()),
        }
    }

    fn try_take(&self, now: Instant) -> bool {
        let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
        while recent
            .front()
            .is_some_and(|t| now.duration_since(*t) >= Duration::from_secs(1))
        {
            recent.pop_front();
        }
        if recent.len() >= self.per_second {
            return false;
        }
        recent.push_back(now);
        true
    }
}

/// The caller an active answer names: `sub`, or for client-credentials tokens without one
/// the client (RFC 9068 §2.2). An empty or missing one is refused: it must never become a
/// subject every such token would share.
pub fn subject(claims: &Map<String, Value>) -> Result<String, AuthError> {
    ["sub", "client_id"]
        .iter()
        .filter_map(|claim| claims.get(*claim).and_then(Value::as_str))
        .find(|value| !value.is_empty())
        .map(str::to_owned)
        .ok_or_else(|| AuthError::Rejected("the answer names no subject (sub or client_id)".into()))
}

/// Checks an active introspection answer against the issuer's rules; returns its `exp`.
pub fn check_claims(
    issuer: &IssuerConfig,
    claims: &Map<String, Value>,
    now: u64,
) -> Result<u64, AuthError> {
    let reject = |why: &str| Err(AuthError::Rejected(why.to_owned()));
    if claims
        .get("iss")
        .and_then(Value::as_str)
        .is_some_and(|iss| iss != issuer.issuer)
    {
        return reject("wrong issuer");
    }
    let audience_ok = match claims.get("aud") {
        Some(Value::String(aud)) => issuer.audiences.contains(aud),
        Some(Value::Array(auds)) => auds
            .iter()
            .filter_map(Value::as_str)
            .any(|a| issuer.audiences.iter().any(|w| w == a)),
        _ => false,
    };
    if !audience_ok {
        return reject("wrong audience");
    }
    let Some(exp) = claims.get("exp").and_then(Value::as_u64) else {
        return reject("missing claim exp");
    };
    if exp + issuer.leeway_seconds <= now {
        return reject("expired");
    }
    if claims
        .get("nbf")
        .and_then(Value::as_u64)
        .is_some_and(|nbf| nbf > now + issuer.leeway_seconds)
    {
        return reject("not yet valid (nbf)");
    }
    Ok(exp)
}

/// How long to wait for an introspection answer.
pub const INTROSPECTION_TIMEOUT: Duration = Duration::from_secs(5);

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn issuer() -> Result<IssuerConfig, serde_json::Error> {
        serde_json::from_value(
            json!({"issuer": "https://idp", "audiences": ["https://stepgate"], "leeway_seconds": 30}),
        )
    }

    fn claims(value: Value) -> Map<String, Value> {
        value.as_object().cloned().unwrap_or_default()
    }

    #[test]
    fn calls_are_bounded_over_any_second() {
        let limit = CallLimit::new(3);
        let t0 = Instant::now();
        assert!((0..3).all(|_| limit.try_take(t0)));
        assert!(!limit.try_take(t0 + Duration::from_millis(999)));
        assert!(limit.try_take(t0 + Duration::from_secs(1)));
    }

    #[test]
    fn an_answer_must_name_a_caller() {
        assert_eq!(
            subject(&claims(json!({"sub": "a", "client_id": "b"}))).ok(),
            Some("a".into())
        );
        assert_eq!(
            subject(&claims(json!({"sub": "", "client_id": "b"}))).ok(),
            Some("b".into())
        );
        assert!(subject(&claims(json!({"sub": "", "client_id": ""}))).is_err());
        assert!(subject(&claims(json!({"client_id": 7}))).is_err());
        assert!(subject(&claims(json!({}))).is_err());
    }

    #[test]
    fn an_active_answer_must_fit_the_issuer() -> Result<(), serde_json::Error> {
        let issuer = issuer()?;
        let good =
            json!({"active": true, "iss": "https://idp", "aud": "https://stepgate", "exp": 1_000});
        assert_eq!(
            check_claims(&issuer, &claims(good.clone()), 900).ok(),
            Some(1_000)
        );
        assert!(
            check_claims(&issuer, &claims(good.clone()), 1_029).is_ok(),
            "within leeway"
        );
        assert!(
            check_claims(&issuer, &claims(good), 1_030).is_err(),
            "expired"
        );
        for bad in [
            json!({"active": true, "iss": "https://other", "aud": "https://stepgate", "exp": 1_000}),
            json!({"active": true, "aud": "https://elsewhere", "exp": 1_000}),
            json!({"active": true, "exp": 1_000}),
            json!({"active": true, "aud": ["https://stepgate"]}),
            json!({"active": true, "aud": ["x", "https://stepgate"], "exp": 1_000, "nbf": 990}),
        ] {
            assert!(
                check_claims(&issuer, &claims(bad.clone()), 900).is_err(),
                "{bad}"
            );
        }
        let within_leeway =
            json!({"active": true, "aud": ["x", "https://stepgate"], "exp": 1_000, "nbf": 920});
        assert!(check_claims(&issuer, &claims(within_leeway), 900).is_ok());
        Ok(())
    }
}
